//! The few-step, class-conditional MeanFlow image generator (spec §10.6 carried to images): a
//! small U-Net `u(x, r, t, class)` predicts the average velocity over `[r, t]` (t = 0 data,
//! t = 1 noise) and samples in N steps, `x ← x − (t_k − t_{k+1})·u(x, r = t_{k+1}, t = t_k)`
//! on `t_k = linspace(1, 0, N+1)`. Times and class enter through an embedding that biases every
//! block. Every weight sits in a LoRA-capable layer.
//!
//! MeanFlow's target needs `du/dt` along the tangent `(dx = v, dr = 0, dt = 1)`; burn has reverse
//! mode only, so the forward pass carries an optional tangent through every operation
//! (forward-mode, exact), as the toy MLP does.

use super::generator::{pixel_norm, upsample2};
use super::shapes::{CLASSES, PIXELS, SIZE};
use crate::lora::{LoraConfig, LoraConv2d, LoraLinear, NamedTensor, Targets};
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
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
    pub embed: LoraLinear,
    /// Stride-2 convolutions.
    pub down: Vec<LoraConv2d>,
    /// Bottleneck: `[flattened 4×4 features, embedding]` → 4×4 features.
    pub mid: LoraLinear,
    /// Upsampling convolutions on `[upsampled, skip]`.
    pub up: Vec<LoraConv2d>,
    /// Per-block channel bias from the embedding: down blocks, then up blocks.
    pub film: Vec<LoraLinear>,
    /// 3×3 convolution to the RGB velocity.
    pub out: LoraConv2d,
    /// Sampling steps N (not a weight: set by the run).
    pub steps: usize,
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

    fn conv(self, c: &LoraConv2d) -> Self {
        Self { x: c.forward(self.x), dx: self.dx.map(|d| c.tangent(d)) }
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

fn linear(l: &LoraLinear, a: Dual<2>) -> Dual<2> {
    Dual { x: l.forward(a.x), dx: a.dx.map(|d| l.tangent(d)) }
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

fn conv3(i: usize, o: usize, stride: usize, device: &Device) -> LoraConv2d {
    LoraConv2d::plain(
        Conv2dConfig::new([i, o], [3, 3])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device),
    )
}

impl FlowGenerator {
    pub fn new(steps: usize, device: &Device) -> Self {
        let down_in = [3, DOWN[0], DOWN[1]];
        let up_in = [DOWN[2] + DOWN[1], UP[0] + DOWN[0], UP[1] + 3];
        let bottleneck = DOWN[2] * 16;
        Self {
            embed: LoraLinear::plain(LinearConfig::new(4 * FREQS + CLASSES.len(), COND).init(device)),
            down: (0..3).map(|i| conv3(down_in[i], DOWN[i], 2, device)).collect(),
            mid: LoraLinear::plain(LinearConfig::new(bottleneck + COND, bottleneck).init(device)),
            up: (0..3).map(|i| conv3(up_in[i], UP[i], 1, device)).collect(),
            film: DOWN.iter().chain(&UP).map(|&c| LoraLinear::plain(LinearConfig::new(COND, c).init(device))).collect(),
            out: conv3(UP[2], 3, 1, device),
            steps,
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
        let block = |h: Dual<4>, c: &LoraConv2d, i: usize| h.conv(c).pixel_norm().add_bias(film[i].clone()).silu();

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

    /// N-step sampling from noise `z: [n, 3·32·32]` → images `[n, 3, 32, 32]` (unbounded; the
    /// data lie in [−1, 1]). Differentiable through every step.
    pub fn forward(&self, z: Tensor<2>, classes: Tensor<2>) -> Tensor<4> {
        self.sample(z, classes, self.steps)
    }

    /// Sampling with gradients through the last `grad_steps` steps only (DRaFT-K): the state
    /// entering them is detached.
    pub fn sample(&self, z: Tensor<2>, classes: Tensor<2>, grad_steps: usize) -> Tensor<4> {
        let n = z.dims()[0];
        let mut x = z.reshape([n, 3, SIZE, SIZE]);
        for k in 0..self.steps {
            let t = 1.0 - k as f64 / self.steps as f64;
            let r = 1.0 - (k + 1) as f64 / self.steps as f64;
            x = x.clone() - self.average_velocity(x, r, t, classes.clone()).mul_scalar(t - r);
            if self.steps - k > grad_steps {
                x = x.detach();
            }
        }
        x
    }

    /// The pretraining loss at data `x0`, noise `x1` (both `[B, 3, 32, 32]`) and times `t ≥ r`
    /// (`[B, 1]`): `u_tgt = v − (t − r) du/dt` along `(v, 0, 1)`, MSE to `stopgrad(u_tgt)`,
    /// adaptively weighted by `1/(stopgrad(ℓ) + 0.01)` (§10.6). Returns the weighted loss (to
    /// backpropagate) and the plain MSE ℓ (to report: the weighted one sits near 1).
    pub fn loss(
        &self,
        x0: Tensor<4>,
        x1: Tensor<4>,
        t: Tensor<2>,
        r: Tensor<2>,
        classes: Tensor<2>,
    ) -> (Tensor<1>, f64) {
        let b = x0.dims()[0];
        let t4 = t.clone().reshape([b, 1, 1, 1]);
        let xt = x0.clone() * t4.clone().neg().add_scalar(1.0) + x1.clone() * t4;
        let v = x1 - x0;
        let gap = (t.clone() - r.clone()).reshape([b, 1, 1, 1]);
        // With r = t on every row (the flow-matching phase) the JVP term is multiplied by zero:
        // skip the tangent pass, which costs as much as a forward pass; the target is exactly v.
        let target = if gap.clone().abs().max().into_scalar::<f32>() == 0.0 {
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
        let mse = l.clone().into_scalar::<f64>();
        (l.clone() / l.detach().add_scalar(0.01), mse)
    }

    /// The module paths of the layers that can carry adapters.
    pub fn layer_paths() -> Vec<String> {
        let mut p = vec!["embed".to_string()];
        p.extend((0..3).map(|i| format!("down.{i}")));
        p.push("mid".into());
        p.extend((0..3).map(|i| format!("up.{i}")));
        p.extend((0..6).map(|i| format!("film.{i}")));
        p.push("out".into());
        p
    }

    /// Freeze every base weight and attach adapters to the `targets` layers.
    pub fn adapt(self, cfg: LoraConfig, targets: &Targets, device: &Device) -> Self {
        let convs = |v: Vec<LoraConv2d>, name: &str| -> Vec<LoraConv2d> {
            v.into_iter().enumerate().map(|(i, c)| c.adapt_if(&format!("{name}.{i}"), targets, cfg, device)).collect()
        };
        Self {
            embed: self.embed.adapt_if("embed", targets, cfg, device),
            down: convs(self.down, "down"),
            mid: self.mid.adapt_if("mid", targets, cfg, device),
            up: convs(self.up, "up"),
            film: self
                .film
                .into_iter()
                .enumerate()
                .map(|(i, l)| l.adapt_if(&format!("film.{i}"), targets, cfg, device))
                .collect(),
            out: self.out.adapt_if("out", targets, cfg, device),
            steps: self.steps,
        }
    }

    /// Adapters folded into the base weights (same names as the pretrained base).
    pub fn merged(&self) -> Self {
        let lin = |l: &LoraLinear| LoraLinear::plain(l.merged());
        let conv = |c: &LoraConv2d| LoraConv2d::plain(c.merged());
        Self {
            embed: lin(&self.embed),
            down: self.down.iter().map(conv).collect(),
            mid: lin(&self.mid),
            up: self.up.iter().map(conv).collect(),
            film: self.film.iter().map(lin).collect(),
            out: conv(&self.out),
            steps: self.steps,
        }
    }

    /// The adapters under PEFT names (`mid.lora_A.weight`, `up.1.lora_B.weight`, …).
    pub fn lora_tensors(&self) -> Vec<NamedTensor> {
        let mut t = self.embed.lora_tensors("embed");
        for (i, c) in self.down.iter().enumerate() {
            t.extend(c.lora_tensors(&format!("down.{i}")));
        }
        t.extend(self.mid.lora_tensors("mid"));
        for (i, c) in self.up.iter().enumerate() {
            t.extend(c.lora_tensors(&format!("up.{i}")));
        }
        for (i, l) in self.film.iter().enumerate() {
            t.extend(l.lora_tensors(&format!("film.{i}")));
        }
        t.extend(self.out.lora_tensors("out"));
        t
    }

    pub fn set_adapters(&mut self, on: bool) {
        for l in std::iter::once(&mut self.embed).chain(std::iter::once(&mut self.mid)).chain(&mut self.film) {
            l.set_enabled(on);
        }
        for c in self.down.iter_mut().chain(&mut self.up).chain(std::iter::once(&mut self.out)) {
            c.set_enabled(on);
        }
    }
}

/// Noise dimension of the flow generator: one value per pixel.
pub const NOISE: usize = PIXELS;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::generator::one_hot;
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
        let g = FlowGenerator::new(2, &dev);
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

    /// Sampling shapes; adapters start at the base and switch off to it.
    #[test]
    fn samples_and_adapters_start_at_the_base() {
        let dev = Device::flex();
        let g = FlowGenerator::new(2, &dev);
        let z = Tensor::<2>::random([3, NOISE], Distribution::Normal(0.0, 1.0), &dev);
        let y = one_hot(&[1, 2, 8], &dev);
        let x = g.forward(z.clone(), y.clone());
        assert_eq!(x.dims(), [3, 3, SIZE, SIZE]);
        let all = Targets::parse(&["all".to_string()], &FlowGenerator::layer_paths()).unwrap();
        let a = g.adapt(LoraConfig { rank: 2, alpha: 2.0 }, &all, &dev);
        assert_eq!(rel(x.clone(), a.forward(z, y)), 0.0);
        assert_eq!(a.lora_tensors().len(), 2 * FlowGenerator::layer_paths().len());
    }
}
