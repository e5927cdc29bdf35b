//! SANA-Sprint as a [`Generator`] (spec §7.1): noise → sCM sampler (the transformer, guidance
//! through its embedding) → `denoised / σ_d` → DC-AE decode (`/ scaling_factor`) → images in
//! [−1, 1], `[n, 3·H·W]` — differentiable through every step and the decoder. The prompt of a
//! condition is its row in the prompt-embeddings file.
//!
//! One particle's noise is `MAX_STEPS` latents from its seed: the initial latents, then the
//! scheduler's fresh noise of each step after the first (the last step's is never used), so the
//! whole sample is a pure function of the seed.

use super::dc_ae::DcAe;
use super::prompts::PromptEmbeddings;
use super::scm::Scm;
use super::transformer::SanaTransformer;
use super::{load_decoder, load_transformer};
use crate::data::Condition;
use crate::models::Generator;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use std::path::Path;
use std::sync::Arc;

/// Most sampling steps SANA-Sprint takes (its sCM schedule is distilled for 1–4).
pub const MAX_STEPS: usize = 4;

/// What sampling needs besides weights: the prompts, the sampler and the shapes.
#[derive(Debug)]
pub struct Setup {
    pub prompts: PromptEmbeddings,
    pub scm: Scm,
    /// Guidance scale × the model's `guidance_embeds_scale`.
    pub guidance: f64,
    pub scaling_factor: f64,
    /// Latent `[C, h, w]`.
    pub latent: [usize; 3],
    /// Decoded image `[H, W]`.
    pub image: [usize; 2],
}

/// The transformer and the DC-AE decoder, under the names of their diffusers folders.
#[derive(Module, Debug)]
pub struct SanaSprint {
    pub transformer: SanaTransformer,
    pub vae: DcAe,
    #[module(skip)]
    pub setup: Arc<Setup>,
}

impl SanaSprint {
    /// The pipeline folder `dir` (`transformer/`, `vae/`) with the prompt embeddings at
    /// `embeddings` (checked against the model's `caption_channels`).
    pub fn load(dir: &Path, embeddings: &Path, guidance: f64, device: &Device) -> Result<Self, String> {
        let (transformer, cfg) = load_transformer(dir, device).map_err(|e| e.to_string())?;
        let (vae, ae) = load_decoder(dir, device).map_err(|e| e.to_string())?;
        let prompts = PromptEmbeddings::read(embeddings, cfg.caption_channels)?;
        let s = cfg.sample_size;
        // Every decoder level but the deepest doubles the size.
        let up = 1 << (ae.levels.len() - 1);
        let setup = Setup {
            prompts,
            scm: Scm::default(),
            guidance: guidance * cfg.guidance_embeds_scale,
            scaling_factor: ae.scaling_factor,
            latent: [cfg.in_channels, s, s],
            image: [s * up, s * up],
        };
        Ok(Self { transformer, vae, setup: Arc::new(setup) })
    }

    fn latent_len(&self) -> usize {
        self.setup.latent.iter().product()
    }

    /// Latents `[n, C, h, w]` of `noise` columns `[k·len, (k+1)·len)`.
    fn chunk(&self, noise: &Tensor<2>, k: usize) -> Tensor<4> {
        let [c, h, w] = self.setup.latent;
        let n = noise.dims()[0];
        let len = self.latent_len();
        noise.clone().slice([0..n, k * len..(k + 1) * len]).reshape([n, c, h, w])
    }
}

impl Generator for SanaSprint {
    fn noise_dim(&self) -> usize {
        MAX_STEPS * self.latent_len()
    }

    fn sample(&self, noise: Tensor<2>, cond: Condition, steps: usize, grad_steps: Option<usize>) -> Tensor<2> {
        assert!((1..=MAX_STEPS).contains(&steps), "validated: SANA-Sprint samples in 1–{MAX_STEPS} steps");
        let n = noise.dims()[0];
        let prompts = self.setup.prompts.batch(&vec![cond.prompt_index(); n], &noise.device());
        let latents = self.chunk(&noise, 0);
        // Step i's fresh noise re-noises the state entering step i + 1; the last step's is unused.
        let step_noise: Vec<Tensor<4>> =
            (1..=steps).map(|k| if k < steps { self.chunk(&noise, k) } else { latents.zeros_like() }).collect();
        let s = &self.setup;
        let z = s.scm.sample(&self.transformer, latents, &prompts, s.guidance, &step_noise, grad_steps);
        let images = self.vae.decoder.forward(z.div_scalar(s.scaling_factor));
        let [_, ch, h, w] = images.dims();
        images.reshape([n, ch * h * w])
    }
}
