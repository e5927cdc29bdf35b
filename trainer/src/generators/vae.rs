//! The toy VAE (spec §10.6): encoder 2 → 256³ → (μ, log σ²) ∈ ℝ⁸, decoder 8 → 256³ → 2.
//! Generation uses the decoder alone.

use super::{Mlp, DATA_DIM, HIDDEN};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

pub const LATENT: usize = 8;
const KL_WEIGHT: f64 = 0.02;
const LOGVAR_CLAMP: f64 = 8.0;

#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: Mlp,
    pub decoder: Mlp,
}

impl Vae {
    pub fn new(decoder: Mlp, device: &Device) -> Self {
        Self { encoder: Mlp::new(&[DATA_DIM, HIDDEN, HIDDEN, HIDDEN, 2 * LATENT], device), decoder }
    }

    /// `0.5‖x − x̂‖²` (summed over dimensions, mean over the batch) `+ 0.02 KL(q(z|x) ‖ N(0, I))`.
    pub fn loss(&self, x: Tensor<2>, eps: Tensor<2>) -> Tensor<1> {
        let h = self.encoder.forward(x.clone());
        let mu = h.clone().slice_dim(1, 0..LATENT);
        let logvar = h.slice_dim(1, LATENT..2 * LATENT).clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP);
        let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
        let diff = x - self.decoder.forward(z);
        let batch = diff.dims()[0] as f64;
        let recon = (diff.clone() * diff).sum().mul_scalar(0.5 / batch);
        let kl = (logvar.clone().exp() + mu.clone() * mu - logvar).sub_scalar(1.0).sum().mul_scalar(0.5 / batch);
        recon + kl.mul_scalar(KL_WEIGHT)
    }
}
