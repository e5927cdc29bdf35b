//! The few-step, class-conditional MeanFlow image generator (spec §10.6 carried to images): a
//! small U-Net `u(x, r, t, class)` predicts the average velocity over `[r, t]` (t = 0 data,
//! t = 1 noise) and samples in N steps, `x ← x − (t_k − t_{k+1})·u(x, r = t_{k+1}, t = t_k)`
//! on `t_k = linspace(1, 0, N+1)`. Times and class enter through an embedding that biases every
//! block.
//!
//! MeanFlow's target needs `du/dt` along the tangent `(dx = v, dr = 0, dt = 1)`; burn has reverse
//! mode only, so the forward pass carries an optional tangent through every operation
//! (forward-mode, exact), as the toy MLP does.

use super::gan::classes as class_rows;
use super::{conv3, pixel_norm, upsample2};
use crate::data::shapes::{CLASSES, PIXELS, SIZE};
use crate::data::Condition;
use crate::models::{time_grid, Generator};
use crate::tensors::{scalar, DeviceError};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};
use std::f64::consts::PI;

/// Fourier frequencies per time input: `π·2^k`, k < FREQS.
const FREQS: usize = 3;
/// Width of the time–class embedding.
const COND: usize = 128;
/// Channels after each stride-2 block (32 → 16 → 8 → 4).
const DOWN: [usize; 3] = [32, 64, 64];
/// Channels after each upsampling block (4 → 8 → 16 → 32); each sees its skip connection.
const UP: [usize; 3] = [32, 16, 16];

#[derive(Module, Debug)]
pub struct FlowGenerator {
    /// `[fourier(t), fourier(t − r), one-hot class]` → `COND`.
    pub embed: Linear,
    /// Stride-2 convolutions.
    pub down: Vec<Conv2d>,
    /// Bottleneck: `[flattened 4×4 features, embedding]` → 4×4 features.
    pub mid: Linear,
    /// Upsampling convolutions on `[upsampled, skip]`.
    pub up: Vec<Conv2d>,
    /// Per-block channel bias from the embedding: down blocks, then up blocks.
    pub film: Vec<Linear>,
    /// 3×3 convolution to the RGB velocity.
    pub out: Conv2d,
}

/// A value and, when a derivative is being pushed forward, its tangent.
#[derive(Clone)]
struct Dual<const D: usize> {
    x: Tensor<D>,
    dx: Option<Tensor<D>>,
}

impl<const D: usize> Dual<D> {
    fn map(self, f: impl Fn(Tensor<D>) -> Tensor<D>) -> Self {
        Self { x: f(self.x), dx: self.dx.map(f) }
    }

    fn reshape<const E: usize>(self, shape: [usize; E]) -> Dual<E> {
        Dual { x: self.x.reshape(shape), dx: self.dx.map(|d| d.reshape(shape)) }
    }

    fn cat(parts: Vec<Self>, dim: usize) -> Self {
        let has_dx = parts.iter().all(|p| p.dx.is_some());
        let (xs, dxs): (Vec<_>, Vec<_>) = parts.into_iter().map(|p| (p.x, p.dx)).unzip();
        let dx = has_dx.then(|| Tensor::cat(dxs.into_iter().map(|d| d.expect("checked")).collect(), dim));
        Self { x: Tensor::cat(xs, dim), dx }
    }

    /// `silu(h) = h·σ(h)`, `d silu = σ(h)(1 + h(1 − σ(h))) dh`.
    fn silu(self) -> Self {
        let s = sigmoid(self.x.clone());
        let dx = self.dx.map(|d| d * s.clone() * (self.x.clone() * s.clone().neg().add_scalar(1.0)).add_scalar(1.0));
        Self { x: self.x * s, dx }
    }
}

impl Dual<4> {
    /// Pixel norm `y = h/ρ`, `ρ = √(mean_c h² + ε)`: `dy = dh/ρ − h·mean_c(h·dh)/ρ³`.
    fn pixel_norm(self) -> Self {
        let Some(dh) = self.dx else { return Self { x: pixel_norm(self.x), dx: None } };
        let rho = self.x.clone().powf_scalar(2.0).mean_dim(1).add_scalar(1e-8).sqrt();
        let proj = (self.x.clone() * dh.clone()).mean_dim(1) / rho.clone().powf_scalar(3.0);
        let dx = dh / rho.clone() - self.x.clone() * proj;
        Self { x: self.x / rho, dx: Some(dx) }
    }

    /// A convolution; its derivative is the convolution without its bias.
    fn conv(self, c: &Conv2d) -> Self {
        let dx = self.dx.map(|d| Conv2d { bias: None, ..c.clone() }.forward(d));
        Self { x: c.forward(self.x), dx }
    }

    /// Add a per-channel bias `[n, ch]`.
    fn add_bias(self, b: Dual<2>) -> Self {
        let [n, ch] = b.x.dims();
        let dx = match (self.dx, b.dx) {
            (Some(d), Some(db)) => Some(d + db.reshape([n, ch, 1, 1])),
            (d, _) => d,
        };
        Self { x: self.x + b.x.reshape([n, ch, 1, 1]), dx }
    }
}

/// A linear layer; its derivative is the weight alone.
fn linear(l: &Linear, a: Dual<2>) -> Dual<2> {
    Dual { x: l.forward(a.x), dx: a.dx.map(|d| d.matmul(l.weight.val())) }
}

/// `[sin(ω_k s), cos(ω_k s)]` for ω_k = π·2^k, and its derivative along `ds`.
fn fourier(s: Tensor<2>, ds: Option<Tensor<2>>) -> Dual<2> {
    let n = s.dims()[0];
    let w: Vec<f32> = (0..FREQS).map(|k| (PI * f64::from(1u32 << k)) as f32).collect();
    let w = Tensor::<1>::from_floats(w.as_slice(), &s.device()).reshape([1, FREQS]);
    let phase = s.expand([n, FREQS]) * w.clone();
    let (sin, cos) = (phase.clone().sin(), phase.cos());
    let dx = ds.map(|ds| {
        let ds = ds.expand([n, FREQS]) * w;
        Tensor::cat(vec![cos.clone() * ds.clone(), sin.clone().neg() * ds], 1)
    });
    Dual { x: Tensor::cat(vec![sin, cos], 1), dx }
}

impl FlowGenerator {
    pub fn new(device: &Device) -> Self {
        let down_in = [3, DOWN[0], DOWN[1]];
        let up_in = [DOWN[2] + DOWN[1], UP[0] + DOWN[0], UP[1] + 3];
        let bottleneck = DOWN[2] * 16;
        Self {
            embed: LinearConfig::new(4 * FREQS + CLASSES.len(), COND).init(device),
            down: (0..3).map(|i| conv3(down_in[i], DOWN[i], 2, device)).collect(),
            mid: LinearConfig::new(bottleneck + COND, bottleneck).init(device),
            up: (0..3).map(|i| conv3(up_in[i], UP[i], 1, device)).collect(),
            film: DOWN.iter().chain(&UP).map(|&c| LinearConfig::new(COND, c).init(device)).collect(),
            out: conv3(UP[2], 3, 1, device),
        }
    }

    /// `u(x, r, t, class)` and, given the tangent `(dx, dr, dt)`, its derivative along it.
    /// `x: [n, 3, 32, 32]`, `t`, `r`: `[n, 1]`, `classes`: one-hot `[n, 10]`.
    fn velocity(
        &self,
        x: Tensor<4>,
        t: Tensor<2>,
        r: Tensor<2>,
        classes: Tensor<2>,
        tangent: Option<(Tensor<4>, Tensor<2>, Tensor<2>)>,
    ) -> (Tensor<4>, Option<Tensor<4>>) {
        let n = x.dims()[0];
        let (dx, dt, dr) = match tangent {
            Some((dx, dt, dr)) => (Some(dx), Some(dt), Some(dr)),
            None => (None, None, None),
        };
        let gap_dt = dt.clone().zip(dr).map(|(dt, dr)| dt - dr);
        let class_dt = dt.as_ref().map(|_| classes.zeros_like());
        let emb = Dual::cat(vec![fourier(t.clone(), dt), fourier(t - r, gap_dt), Dual { x: classes, dx: class_dt }], 1);
        let cond = linear(&self.embed, emb).silu();
        let film: Vec<Dual<2>> = self.film.iter().map(|l| linear(l, cond.clone())).collect();
        let block = |h: Dual<4>, c: &Conv2d, i: usize| h.conv(c).pixel_norm().add_bias(film[i].clone()).silu();

        let h0 = Dual { x, dx };
        let h1 = block(h0.clone(), &self.down[0], 0);
        let h2 = block(h1.clone(), &self.down[1], 1);
        let h3 = block(h2.clone(), &self.down[2], 2).reshape([n, DOWN[2] * 16]);
        let m = linear(&self.mid, Dual::cat(vec![h3, cond], 1)).silu().reshape([n, DOWN[2], 4, 4]);
        let u = block(Dual::cat(vec![m.map(upsample2), h2], 1), &self.up[0], 3);
        let u = block(Dual::cat(vec![u.map(upsample2), h1], 1), &self.up[1], 4);
        let u = block(Dual::cat(vec![u.map(upsample2), h0], 1), &self.up[2], 5);
        let out = u.conv(&self.out);
        (out.x, out.dx)
    }

    /// `u(x, r, t, class)` with scalar times for every row.
    pub fn average_velocity(&self, x: Tensor<4>, r: f64, t: f64, classes: Tensor<2>) -> Tensor<4> {
        let n = x.dims()[0];
        let col = |v: f64| Tensor::<2>::ones([n, 1], &x.device()).mul_scalar(v);
        self.velocity(x.clone(), col(t), col(r), classes, None).0
    }

    /// `steps`-step sampling from noise `z: [n, 3·32·32]` → images `[n, 3, 32, 32]` (unbounded;
    /// the data lie in [−1, 1]), differentiable through the last `grad_steps` steps (all when
    /// `None`): the state entering them is detached (DRaFT-K).
    pub fn sample_images(
        &self,
        z: Tensor<2>,
        classes: Tensor<2>,
        steps: usize,
        grad_steps: Option<usize>,
    ) -> Tensor<4> {
        let n = z.dims()[0];
        let grad_steps = grad_steps.unwrap_or(steps);
        let mut x = z.reshape([n, 3, SIZE, SIZE]);
        for (k, (t, r)) in time_grid(steps).enumerate() {
            x = x.clone() - self.average_velocity(x, r, t, classes.clone()).mul_scalar(t - r);
            if steps - k > grad_steps {
                x = x.detach();
            }
        }
        x
    }

    /// The pretraining loss at data `x0`, noise `x1` (both `[B, 3, 32, 32]`) and times `t ≥ r`
    /// (`[B, 1]`): `u_tgt = v − (t − r) du/dt` along `(v, 0, 1)`, MSE to `stopgrad(u_tgt)`,
    /// adaptively weighted by `1/(stopgrad(ℓ) + 0.01)` (§10.6). Returns the weighted loss (to
    /// backpropagate) and the plain MSE ℓ (to report: the weighted one sits near 1); `Err` when
    /// the device failed.
    pub fn loss(
        &self,
        x0: Tensor<4>,
        x1: Tensor<4>,
        t: Tensor<2>,
        r: Tensor<2>,
        classes: Tensor<2>,
    ) -> Result<(Tensor<1>, f64), DeviceError> {
        let b = x0.dims()[0];
        let t4 = t.clone().reshape([b, 1, 1, 1]);
        let xt = x0.clone() * t4.clone().neg().add_scalar(1.0) + x1.clone() * t4;
        let v = x1 - x0;
        let gap = (t.clone() - r.clone()).reshape([b, 1, 1, 1]);
        // With r = t on every row (the flow-matching phase) the JVP term is multiplied by zero:
        // skip the tangent pass, which costs as much as a forward pass; the target is exactly v.
        let target = if scalar(&gap.clone().abs().max())? == 0.0 {
            v.detach()
        } else {
            let (ones, zeros) = (t.ones_like(), t.zeros_like());
            let (_, dudt) = self.velocity(
                xt.clone().detach(),
                t.clone().detach(),
                r.clone().detach(),
                classes.clone(),
                Some((v.clone().detach(), ones, zeros)),
            );
            (v - dudt.expect("tangent given") * gap).detach()
        };
        let (u, _) = self.velocity(xt, t, r, classes, None);
        let l = (u - target).powf_scalar(2.0).mean();
        let mse = scalar(&l)?;
        Ok((l.clone() / l.detach().add_scalar(0.01), mse))
    }
}

impl Generator for FlowGenerator {
    fn noise_dim(&self) -> usize {
        NOISE
    }

    fn sample(&self, noise: Tensor<2>, cond: Condition, steps: usize, grad_steps: Option<usize>) -> Tensor<2> {
        let n = noise.dims()[0];
        let device = noise.device();
        self.sample_images(noise, class_rows(cond, n, &device), steps, grad_steps).reshape([n, PIXELS])
    }
}

/// Noise dimension of the flow generator: one value per pixel.
pub const NOISE: usize = PIXELS;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::one_hot;
    use burn::tensor::Distribution;

    fn rel(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let n = (a.clone() - b).powf_scalar(2.0).sum().sqrt().into_scalar::<f32>();
        n / a.powf_scalar(2.0).sum().sqrt().into_scalar::<f32>()
    }

    /// The forward-mode derivative agrees with a central difference of the network along the
    /// same tangent. With step h = 1e-3 the difference's truncation error is O(h²·|u'''|) and its
    /// f32 rounding O(1e-7/h) ≈ 1e-4 relative; a wrong term (a sign, a missing ρ³) is O(1).
    #[test]
    fn tangent_matches_a_central_difference() {
        let dev = Device::flex();
        let g = FlowGenerator::new(&dev);
        let n = 4;
        let x = Tensor::<4>::random([n, 3, SIZE, SIZE], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<4>::random([n, 3, SIZE, SIZE], Distribution::Normal(0.0, 1.0), &dev);
        let t = Tensor::<2>::from_floats([[0.9], [0.5], [0.7], [0.3]], &dev);
        let r = Tensor::<2>::from_floats([[0.2], [0.5], [0.1], [0.0]], &dev);
        let y = one_hot(&[0, 3, 5, 9], &dev);
        let (u, du) =
            g.velocity(x.clone(), t.clone(), r.clone(), y.clone(), Some((v.clone(), t.ones_like(), t.zeros_like())));
        let h = 1e-3;
        let at = |s: f64| {
            let xs = x.clone() + v.clone().mul_scalar(s);
            g.velocity(xs, t.clone().add_scalar(s), r.clone(), y.clone(), None).0
        };
        let fd = (at(h) - at(-h)).div_scalar(2.0 * h);
        let err = rel(du.unwrap(), fd);
        assert!(err < 1e-2, "forward-mode and finite difference disagree: relative error {err}");
        assert_eq!(rel(u, g.velocity(x, t, r, y, None).0), 0.0, "the tangent does not change the value");
    }

    /// Sampling shapes.
    #[test]
    fn samples_images() {
        let dev = Device::flex();
        let g = FlowGenerator::new(&dev);
        let z = Tensor::<2>::random([3, NOISE], Distribution::Normal(0.0, 1.0), &dev);
        assert_eq!(g.sample(z, Condition::Class(2), 2, None).dims(), [3, PIXELS]);
    }
}
