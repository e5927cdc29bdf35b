//! The toy VAE (spec §10.6): encoder 2 → 256³ → (μ, log σ²) ∈ ℝ⁸, decoder 8 → 256³ → 2.
//! Generation uses the decoder alone.

use super::pretrain::{self, Data, DATA_DIM};
use super::HIDDEN;
use crate::config::Config;
use crate::data::Condition;
use crate::models::mlp::{self, Mlp};
use crate::models::{Family, Generator};
use crate::observe::Progress;
use crate::tensors::{scalar, DeviceError};
use burn::module::Module;
use burn::nn::Linear;
use burn::optim::AdamConfig;
use burn::tensor::{Device, Tensor};
use std::ops::RangeInclusive;

pub const LATENT: usize = 8;
const KL_WEIGHT: f64 = 0.02;
const LOGVAR_CLAMP: f64 = 8.0;

/// The generator: the VAE's decoder, `z ∈ ℝ⁸ ~ N(0, I) → x`.
#[derive(Module, Debug)]
pub struct VaeDecoder {
    pub layers: Vec<Linear>,
}

impl Generator for VaeDecoder {
    fn noise_dim(&self) -> usize {
        LATENT
    }

    fn sample(&self, noise: Tensor<2>, _: Condition, _: usize, _: Option<usize>) -> Tensor<2> {
        mlp::forward(&self.layers, noise)
    }
}

impl Family for VaeDecoder {
    const NAME: &'static str = "vae";
    const STEPS: RangeInclusive<usize> = 1..=1;
    // Three hidden layers of 256: linear output, sigmoid, SiLU each (burn's SiLU, on CUDA; the
    // fused CPU SiLU keeps no sigmoid, so there this is an upper bound).
    const ACTIVATION_FLOATS: usize = 3 * 3 * HIDDEN;

    fn init(_: &Config, device: &Device) -> Self {
        Self { layers: mlp::linears(&[LATENT, HIDDEN, HIDDEN, HIDDEN, DATA_DIM], device) }
    }

    fn cache_key(cfg: &Config) -> serde_json::Value {
        super::cache_key(cfg)
    }

    fn pretrain_steps(cfg: &Config) -> usize {
        cfg.pretrain.steps
    }

    /// `0.5‖x − x̂‖²` (summed over dimensions, mean over the batch) `+ 0.02 KL(q(z|x) ‖ N(0, I))`,
    /// Adam (ε 1e-8).
    fn pretrain(cfg: &Config, device: &Device, progress: Progress) -> Result<Option<Self>, DeviceError> {
        let data = Data::new(cfg, device);
        let ad = data.device();
        let vae = Vae::new(Self::init(cfg, ad), ad);
        let optim = AdamConfig::new().with_epsilon(1e-8).init();
        let loss = |vae: &Vae, step| {
            let l = vae.loss(data.batch(step), data.normals(step, 1, LATENT));
            let reported = scalar(&l)?;
            Ok((l, reported))
        };
        pretrain::train(&data, vae, optim, loss, |vae| vae.decoder.clone(), progress)
    }
}

/// Encoder and decoder, trained together.
#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: Mlp,
    pub decoder: VaeDecoder,
}

impl Vae {
    pub fn new(decoder: VaeDecoder, device: &Device) -> Self {
        Self { encoder: Mlp::new(&[DATA_DIM, HIDDEN, HIDDEN, HIDDEN, 2 * LATENT], device), decoder }
    }

    /// `0.5‖x − x̂‖²` (summed over dimensions, mean over the batch) `+ 0.02 KL(q(z|x) ‖ N(0, I))`.
    pub fn loss(&self, x: Tensor<2>, eps: Tensor<2>) -> Tensor<1> {
        let h = self.encoder.forward(x.clone());
        let mu = h.clone().slice_dim(1, 0..LATENT);
        let logvar = h.slice_dim(1, LATENT..2 * LATENT).clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP);
        let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        let diff = x - mlp::forward(&self.decoder.layers, z);
        let batch = diff.dims()[0] as f64;
        let recon = (diff.clone() * diff).sum().mul_scalar(0.5 / batch);
        let kl = (logvar.clone().exp() + mu.clone() * mu - logvar).sub_scalar(1.0).sum().mul_scalar(0.5 / batch);
        recon + kl.mul_scalar(KL_WEIGHT)
    }
}
