//! The SANA-Sprint sampler as diffusers' `SanaSprintPipeline` + `SCMScheduler` run it (spec §7.1):
//! TrigFlow time from `max_timestep` (π/2) down to 0 — evenly spaced, or π/2, 1.3, 0 for two
//! steps — guidance through the model's embedding (one pass, no CFG), and the consistency update
//! `x₀ = cos(s)·x − sin(s)·F`, `x ← cos(t)·x₀ + sin(t)·σ_d·z` with fresh noise `z` each step.
//! Differentiable through every step. The step noise is an input: in training it is a function of
//! seeds, in a check it is diffusers' own.

use super::transformer::{Conditioning, SanaTransformer};
use burn::tensor::Tensor;

/// Prompt embeddings `[b, L, caption_channels]` and their mask `[b, L]` (1 = token).
pub struct Prompts {
    pub ctx: Tensor<3>,
    pub mask: Tensor<2>,
}

/// The sampler's settings (diffusers' defaults for SANA-Sprint).
#[derive(Clone, Debug, PartialEq)]
pub struct Scm {
    pub sigma_data: f64,
    pub max_timestep: f64,
    /// The middle time of a two-step schedule.
    pub intermediate_timestep: f64,
}

impl Default for Scm {
    // diffusers' `max_timesteps = 1.57080`, not exactly π/2: the same times as the reference.
    #[allow(clippy::approx_constant)]
    fn default() -> Self {
        Self { sigma_data: 0.5, max_timestep: 1.57080, intermediate_timestep: 1.3 }
    }
}

impl Scm {
    /// The `steps + 1` TrigFlow times, from `max_timestep` to 0.
    pub fn timesteps(&self, steps: usize) -> Vec<f64> {
        if steps == 2 {
            return vec![self.max_timestep, self.intermediate_timestep, 0.0];
        }
        (0..=steps).map(|i| self.max_timestep * (1.0 - i as f64 / steps as f64)).collect()
    }

    /// Latents from initial noise `latents` `[b, C, H, W]` (N(0, I), as diffusers' `latents=`) in
    /// `step_noise.len()` steps: `denoised / σ_d`, what the decoder takes. `guidance` is the
    /// guidance scale times the model's `guidance_embeds_scale` (4.5 × 0.1 in the paper).
    /// Differentiable through the last `grad_steps` steps only, or all with `None` (DRaFT-K: the
    /// state entering them is detached).
    pub fn sample(
        &self,
        model: &SanaTransformer,
        latents: Tensor<4>,
        prompt: &Prompts,
        guidance: f64,
        step_noise: &[Tensor<4>],
        grad_steps: Option<usize>,
    ) -> Tensor<4> {
        let sd = self.sigma_data;
        let ts = self.timesteps(step_noise.len());
        let mut x = latents.mul_scalar(sd);
        let mut denoised = x.clone();
        let detach_at = grad_steps.map(|k| step_noise.len().saturating_sub(k));
        for (i, z) in step_noise.iter().enumerate() {
            if detach_at == Some(i) {
                x = x.detach();
            }
            denoised = self.denoise(model, x, ts[i], prompt, guidance);
            x = self.renoise(denoised.clone(), z.clone(), ts[i + 1]);
        }
        denoised.mul_scalar(1.0 / sd)
    }

    /// One step's consistency estimate `x₀ = cos(s)·x − sin(s)·F` from the state `x` at TrigFlow
    /// time `s`.
    pub fn denoise(&self, model: &SanaTransformer, x: Tensor<4>, s: f64, prompt: &Prompts, guidance: f64) -> Tensor<4> {
        let (b, sd) = (x.dims()[0], self.sigma_data);
        // The model's time: TrigFlow s as a flow-matching t ∈ [0, 1], and its input scaling.
        let u = s.sin() / (s.cos() + s.sin());
        let norm = (u * u + (1.0 - u) * (1.0 - u)).sqrt();
        let input = x.clone().mul_scalar(norm / sd);
        let g = vec![guidance as f32; b];
        let cond = Conditioning {
            ctx: prompt.ctx.clone(),
            mask: prompt.mask.clone(),
            timestep: &vec![u as f32; b],
            guidance: Some(&g),
        };
        let out = model.forward(input.clone(), &cond);
        let f = (input.mul_scalar(1.0 - 2.0 * u) + out.mul_scalar(1.0 - 2.0 * u + 2.0 * u * u)).mul_scalar(sd / norm);
        x.mul_scalar(s.cos()) - f.mul_scalar(s.sin())
    }

    /// The state entering the next step: `cos(t)·x₀ + sin(t)·σ_d·z`.
    pub fn renoise(&self, denoised: Tensor<4>, z: Tensor<4>, t: f64) -> Tensor<4> {
        denoised.mul_scalar(t.cos()) + z.mul_scalar(t.sin() * self.sigma_data)
    }
}
