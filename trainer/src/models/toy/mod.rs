//! The toy generator families of spec §10.6 (2-D points, width-256 SiLU MLPs): the one-step VAE
//! decoder and drift generator, and MeanFlow sampled in 1–64 steps. Each keeps its network's
//! plain `layers.N.*` names, so a saved base loads by name.

pub mod drift;
pub mod meanflow;
pub mod pretrain;
pub mod vae;

pub use drift::DriftGenerator;
pub use meanflow::MeanFlowGenerator;
pub use vae::VaeDecoder;

use crate::config::Config;

crate::models::families!(VaeDecoder, DriftGenerator, MeanFlowGenerator);

/// Hidden width of every toy network.
pub const HIDDEN: usize = 256;

/// The cache key of a toy base: everything that shapes its weights.
pub(crate) fn cache_key(cfg: &Config) -> serde_json::Value {
    serde_json::json!({
        "v": 1,
        "family": cfg.model.family,
        "seed": cfg.seed,
        "steps": cfg.pretrain.steps,
        "batch": cfg.pretrain.batch,
        "lr": cfg.pretrain.lr,
        "eval_every": cfg.pretrain.eval_every,
        "eval_samples": cfg.eval.samples,
    })
}
