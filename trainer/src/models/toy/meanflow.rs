//! MeanFlow (spec §10.6): a network `u(z, r, t)` on input `[z, t, t − r]`, t = 0 data, t = 1
//! noise, sampled in N steps.

use super::pretrain::{self, Data, DATA_DIM};
use super::HIDDEN;
use crate::config::Config;
use crate::data::Condition;
use crate::models::{mlp, time_grid, Family, Generator};
use crate::noise::{self, Stream};
use crate::observe::Progress;
use crate::tensors::{matrix, scalar, DeviceError};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::nn::Linear;
use burn::optim::AdamConfig;
use burn::tensor::{activation::sigmoid, Device, Tensor};
use rand::Rng;
use std::ops::RangeInclusive;

#[derive(Module, Debug)]
pub struct MeanFlowGenerator {
    pub layers: Vec<Linear>,
}

fn input(z: Tensor<2>, t: Tensor<2>, r: Tensor<2>) -> Tensor<2> {
    Tensor::cat(vec![z, t.clone(), t - r], 1)
}

fn column(value: f64, like: &Tensor<2>) -> Tensor<2> {
    Tensor::<2>::ones([like.dims()[0], 1], &like.device()).mul_scalar(value)
}

impl Generator for MeanFlowGenerator {
    fn noise_dim(&self) -> usize {
        DATA_DIM
    }

    /// N-step sampling: `t_k = linspace(1, 0, N+1)`, `x ← x − (t_k − t_{k+1}) u(x, r = t_{k+1}, t = t_k)`.
    fn sample(&self, noise: Tensor<2>, _: Condition, steps: usize, _: Option<usize>) -> Tensor<2> {
        let mut x = noise;
        for (t, r) in time_grid(steps) {
            let u = mlp::forward(&self.layers, input(x.clone(), column(t, &x), column(r, &x)));
            x = x - u.mul_scalar(t - r);
        }
        x
    }
}

impl Family for MeanFlowGenerator {
    const NAME: &'static str = "meanflow";
    const STEPS: RangeInclusive<usize> = 1..=64;
    // Three hidden layers of 256 (linear output, sigmoid, SiLU; the fused CPU SiLU keeps no
    // sigmoid, so there an upper bound) and the input.
    const ACTIVATION_FLOATS: usize = 3 * 3 * HIDDEN + DATA_DIM + 2;

    fn init(_: &Config, device: &Device) -> Self {
        Self { layers: mlp::linears(&[DATA_DIM + 2, HIDDEN, HIDDEN, HIDDEN, DATA_DIM], device) }
    }

    fn cache_key(cfg: &Config) -> serde_json::Value {
        super::cache_key(cfg)
    }

    fn pretrain_steps(cfg: &Config) -> usize {
        cfg.pretrain.steps
    }

    /// The MeanFlow objective; AdamW(0.9, 0.95), wd 0, clip 1.0 (§10.6).
    fn pretrain(cfg: &Config, device: &Device, progress: Progress) -> Result<Option<Self>, DeviceError> {
        let data = Data::new(cfg, device);
        let net = Self::init(cfg, data.device());
        let optim = AdamConfig::new()
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
            .init();
        let loss = |net: &Self, step| {
            let (t, r) = times(cfg.seed, step, cfg.pretrain.batch, data.device());
            let l = net.loss(data.batch(step), data.normals(step, 1, DATA_DIM), t, r);
            let reported = scalar(&l)?;
            Ok((l, reported))
        };
        pretrain::train(&data, net, optim, loss, Self::clone, progress)
    }
}

impl MeanFlowGenerator {
    /// The pretraining loss at data `x0`, noise `x1` and times `t ≥ r` (each `[B, 1]`):
    /// `u_tgt = v − (t − r) du/dt` with the JVP along `(v, 0, 1)`, MSE to `stopgrad(u_tgt)`,
    /// adaptively weighted by `1/(stopgrad(ℓ) + 0.01)` on the batch mean.
    pub fn loss(&self, x0: Tensor<2>, x1: Tensor<2>, t: Tensor<2>, r: Tensor<2>) -> Tensor<1> {
        let one_minus_t = t.clone().neg().add_scalar(1.0);
        let xt = x0.clone() * one_minus_t + x1.clone() * t.clone();
        let v = x1 - x0;
        let inp = input(xt, t.clone(), r.clone());
        // Tangent of [z, t, t − r] along (dz = v, dr = 0, dt = 1) is [v, 1, 1].
        let ones = column(1.0, &v);
        let tangent = Tensor::cat(vec![v.clone(), ones.clone(), ones], 1);
        let (_, dudt) = mlp::forward_jvp(&self.layers, inp.clone().detach(), tangent.detach());
        let target = (v - dudt * (t - r)).detach();
        let u = mlp::forward(&self.layers, inp);
        let diff = u - target;
        let l = (diff.clone() * diff).mean();
        let w = l.clone().detach().add_scalar(0.01);
        l / w
    }
}

/// (t, r): two logistic-normal draws `sigmoid(N(−0.4, 1))`, t = max, r = min, and r = t with
/// probability 0.5 (§10.6).
fn times(seed: u64, step: usize, n: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut rng = noise::rng(seed, Stream::Pretrain, (2 << 40) | step as u64);
    let a = noise::normal_block(&mut rng, n, 2);
    let equal: Vec<f32> = (0..n).map(|_| if rng.random::<f64>() < 0.5 { 1.0 } else { 0.0 }).collect();
    let ab = sigmoid(matrix(a, n, 2, device).sub_scalar(0.4));
    let (x, y) = (ab.clone().slice_dim(1, 0..1), ab.slice_dim(1, 1..2));
    let t = x.clone().max_pair(y.clone());
    let r = x.min_pair(y);
    let eq = matrix(equal, n, 1, device);
    let r = r.clone() + (t.clone() - r) * eq;
    (t, r)
}
