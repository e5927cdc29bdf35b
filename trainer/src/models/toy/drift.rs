//! The one-step drift generator (spec §10.6): `z ∈ ℝ³² → x`, pretrained with the drifting
//! objective — regress the generator onto `stopgrad(x + V)` with a doubly normalised,
//! non-squared-distance kernel field.

use super::pretrain::{self, Data, DATA_DIM};
use super::HIDDEN;
use crate::config::Config;
use crate::data::Condition;
use crate::models::{mlp, Family, Generator};
use crate::observe::Progress;
use crate::svgd::{self, row_sq_norms, sq_dists};
use crate::tensors::DeviceError;
use burn::module::Module;
use burn::nn::Linear;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Tensor};
use std::ops::RangeInclusive;

pub const NOISE_DIM: usize = 32;
/// `temp_d` of the config (a docstring says 0.05; the config wins, §16.13).
pub const TEMP: f64 = 0.15;

#[derive(Module, Debug)]
pub struct DriftGenerator {
    pub layers: Vec<Linear>,
}

impl Generator for DriftGenerator {
    fn noise_dim(&self) -> usize {
        NOISE_DIM
    }

    fn sample(&self, noise: Tensor<2>, _: Condition, _: usize, _: Option<usize>) -> Tensor<2> {
        mlp::forward(&self.layers, noise)
    }
}

impl Family for DriftGenerator {
    const NAME: &'static str = "drift";
    const STEPS: RangeInclusive<usize> = 1..=1;
    // Three hidden layers of 256: linear output, sigmoid, SiLU each (burn's SiLU, on CUDA; the
    // fused CPU SiLU keeps no sigmoid, so there this is an upper bound).
    const ACTIVATION_FLOATS: usize = 3 * 3 * HIDDEN;

    fn init(_: &Config, device: &Device) -> Self {
        Self { layers: mlp::linears(&[NOISE_DIM, HIDDEN, HIDDEN, HIDDEN, DATA_DIM], device) }
    }

    fn cache_key(cfg: &Config) -> serde_json::Value {
        super::cache_key(cfg)
    }

    fn pretrain_steps(cfg: &Config) -> usize {
        cfg.pretrain.steps
    }

    /// The drifting objective toward the data, Adam (ε 1e-8).
    fn pretrain(cfg: &Config, device: &Device, progress: Progress) -> Result<Option<Self>, DeviceError> {
        let data = Data::new(cfg, device);
        let net = Self::init(cfg, data.device());
        let optim = AdamConfig::new().with_epsilon(1e-8).init();
        let loss = |net: &Self, step| {
            let x = mlp::forward(&net.layers, data.normals(step, 1, NOISE_DIM));
            let xd = x.clone().detach().without_autodiff();
            let v = field(&xd, &data.batch(step).without_autodiff(), TEMP);
            let (reported, g) = svgd::regression_grad(&v, cfg.pretrain.batch)?;
            Ok(((x * g.autodiff()).sum(), reported))
        };
        pretrain::train(&data, net, optim, loss, Self::clone, progress)
    }
}

/// The drift field `V` for generated points `x` (detached, `[N, D]`) toward data `y` (`[P, D]`).
pub fn field(x: &Tensor<2>, y: &Tensor<2>, temp: f64) -> Tensor<2> {
    let n = x.dims()[0];
    let dist = |a: &Tensor<2>, b: &Tensor<2>| sq_dists(a, b, &row_sq_norms(b)).sqrt();
    // Self-pairs (gen i vs gen i) are masked out.
    let eye = Tensor::<2>::eye(n, &x.device());
    let k_gen = dist(x, x).mul_scalar(-1.0 / temp).exp() * eye.neg().add_scalar(1.0);
    let k_dat = dist(x, y).mul_scalar(-1.0 / temp).exp();
    // K = k / √(rowsum · colsum), rows over all targets, columns summed over the gen rows.
    let row = k_gen.clone().sum_dim(1) + k_dat.clone().sum_dim(1);
    let kg = k_gen.clone() / (row.clone() * k_gen.sum_dim(0)).sqrt();
    let kd = k_dat.clone() / (row * k_dat.sum_dim(0)).sqrt();
    // V_i = Σ_p K_ip (Σ_g K_ig) y_p − Σ_g K_ig (Σ_p K_ip) x_g
    let (sg, sd) = (kg.clone().sum_dim(1), kd.clone().sum_dim(1));
    kd.matmul(y.clone()) * sg - kg.matmul(x.clone()) * sd
}
