//! Generators: a burn module (the trainable network) plus the few-step sampling procedure that
//! turns noise into a particle. The network knows nothing of ranks or of FAV.

pub mod drift;
pub mod meanflow;
pub mod mlp;
pub mod vae;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use mlp::Mlp;

/// The toy generator families of spec §10.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// One-step VAE decoder `z ∈ ℝ⁸ → x`.
    Vae,
    /// One-step generator trained with the drifting objective, `z ∈ ℝ³² → x`.
    Drift,
    /// MeanFlow `u(z, r, t)` sampled in 1–16 steps, `z ∈ ℝ²`.
    Meanflow,
}

pub const HIDDEN: usize = 256;
pub const DATA_DIM: usize = 2;

/// Noise → particle through the trainable network; differentiable end to end.
#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    pub family: Family,
    /// MeanFlow sampling steps (1 for the one-step families).
    pub steps: usize,
}

impl Sampler {
    pub fn noise_dim(&self) -> usize {
        match self.family {
            Family::Vae => vae::LATENT,
            Family::Drift => drift::NOISE_DIM,
            Family::Meanflow => DATA_DIM,
        }
    }

    /// The trainable network of the generator (what FAV aligns).
    pub fn new_net(&self, device: &burn::tensor::Device) -> Mlp {
        let input = match self.family {
            Family::Meanflow => DATA_DIM + 2,
            _ => self.noise_dim(),
        };
        Mlp::new(&[input, HIDDEN, HIDDEN, HIDDEN, DATA_DIM], device)
    }

    pub fn generate(&self, net: &Mlp, z: Tensor<2>) -> Tensor<2> {
        match self.family {
            Family::Vae | Family::Drift => net.forward(z),
            Family::Meanflow => meanflow::sample(net, z, self.steps),
        }
    }
}
