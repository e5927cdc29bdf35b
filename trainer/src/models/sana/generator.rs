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
use super::scm::{Prompts, Scm};
use super::transformer::SanaTransformer;
use super::{load_decoder, load_transformer};
use crate::data::Condition;
use crate::models::Generator;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use std::path::Path;
use std::sync::Arc;

/// Most sampling steps SANA-Sprint takes (its sCM schedule is distilled for 1–4).
pub const MAX_STEPS: usize = 4;

/// What sampling needs besides weights: the prompts, the sampler and the shapes.
#[derive(Clone, Debug)]
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
    /// Gradient checkpointing ([`Generator::accumulate_grads`]): backpropagate step by step
    /// (`.0`) and decoder block by block (`.1`), recomputing each from its stored input.
    pub recompute: (bool, bool),
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
            recompute: (false, false),
        };
        Ok(Self { transformer, vae, setup: Arc::new(setup) })
    }

    /// The same model, with gradient checkpointing in the sampling steps and in the decoder on
    /// or off.
    pub fn with_recompute(mut self, steps: bool, decoder: bool) -> Self {
        Arc::make_mut(&mut self.setup).recompute = (steps, decoder);
        self
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
        let (latents, step_noise, prompts) = self.inputs(&noise, cond, steps);
        let s = &self.setup;
        let z = s.scm.sample(&self.transformer, latents, &prompts, s.guidance, &step_noise, grad_steps);
        let images = self.vae.decoder.forward(z.div_scalar(s.scaling_factor));
        let [n, ch, h, w] = images.dims();
        images.reshape([n, ch * h * w])
    }

    /// With `recompute`: a forward pass without a graph that keeps each link's input, then the
    /// backward pass link by link from the end — each link rerun from its input with a graph,
    /// its input's cotangent carried to the link before, the transformer's parameter gradients
    /// accumulated. A link is one sampling step (all of them as one link without checkpointing
    /// in the steps) or one decoder block (the whole decoder without checkpointing there), so at
    /// most one link's activations are alive.
    fn accumulate_grads(
        &self,
        noise: Tensor<2>,
        cond: Condition,
        steps: usize,
        grad_steps: Option<usize>,
        cotangent: &dyn Fn(Tensor<2>) -> Tensor<2>,
        acc: &mut GradientsAccumulator<Self>,
    ) {
        if self.setup.recompute == (false, false) {
            return crate::models::whole_graph_grads(self, noise, cond, steps, grad_steps, cotangent, acc);
        }
        let (s, plain) = (&self.setup, self.valid());
        let (latents, step_noise, prompts) = plain.inputs(&noise.detach().without_autodiff(), cond, steps);
        let (sd, ts) = (s.scm.sigma_data, s.scm.timesteps(steps));
        // Forward, keeping each link's input.
        let mut states = Vec::with_capacity(steps);
        let mut x = latents.mul_scalar(sd);
        let mut denoised = x.clone();
        for (i, z) in step_noise.iter().enumerate() {
            states.push(x.clone());
            denoised = s.scm.denoise(&plain.transformer, x, ts[i], &prompts, s.guidance);
            x = s.scm.renoise(denoised.clone(), z.clone(), ts[i + 1]);
        }
        let decoder = &plain.vae.decoder;
        let links = if s.recompute.1 {
            decoder.links()
        } else {
            vec![Box::new(move |z: Tensor<4>| decoder.forward(z)) as Box<dyn Fn(Tensor<4>) -> Tensor<4>>]
        };
        let mut inputs = Vec::new();
        let images = links.iter().fold(denoised.div_scalar(sd * s.scaling_factor), |h, link| {
            inputs.push(h.clone());
            link(h)
        });
        let [n, ch, h, w] = images.dims();
        let mut cot = cotangent(images.reshape([n, ch * h * w])).reshape([n, ch, h, w]);
        // Backward: a link's output cotangent gives its input's (and its parameters') gradients.
        let vjp = |f: &dyn Fn(Tensor<4>) -> Tensor<4>, input: Tensor<4>, cot: Tensor<4>| {
            let a = input.autodiff().require_grad();
            let grads = (f(a.clone()) * cot.autodiff()).sum().backward();
            (a.grad(&grads).expect("the input carries the graph"), grads)
        };
        for (link, input) in links.iter().zip(inputs).rev() {
            cot = vjp(link.as_ref(), input, cot).0;
        }
        // The decoder read denoised / (σ_d · scaling); a step's x₀ reaches the next state as
        // cos(t)·x₀, and the last x₀ is the output.
        let mut cot = cot.div_scalar(sd * s.scaling_factor);
        let first = grad_steps.map_or(0, |k| steps.saturating_sub(k));
        if !s.recompute.0 {
            // The differentiated steps as one link, from the state entering the first.
            let sample = |x: Tensor<4>| {
                let (mut x, mut d) = (x.clone(), x);
                for i in first..steps {
                    d = s.scm.denoise(&self.transformer, x, ts[i], &prompts, s.guidance);
                    x = s.scm.renoise(d.clone(), step_noise[i].clone().autodiff(), ts[i + 1]);
                }
                d
            };
            let (_, grads) = vjp(&sample, states[first].clone(), cot);
            acc.accumulate(self, GradientsParams::from_grads(grads, self));
            return;
        }
        for i in (first..steps).rev() {
            let step = |x: Tensor<4>| s.scm.denoise(&self.transformer, x, ts[i], &prompts, s.guidance);
            let (cot_x, grads) = vjp(&step, states[i].clone(), cot);
            acc.accumulate(self, GradientsParams::from_grads(grads, self));
            cot = cot_x.mul_scalar(ts[i].cos());
        }
    }
}

impl SanaSprint {
    /// The initial latents, the step noises (step i's re-noises the state entering step i + 1;
    /// the last step's is unused) and the prompt of `noise`'s rows.
    fn inputs(&self, noise: &Tensor<2>, cond: Condition, steps: usize) -> (Tensor<4>, Vec<Tensor<4>>, Prompts) {
        assert!((1..=MAX_STEPS).contains(&steps), "validated: SANA-Sprint samples in 1–{MAX_STEPS} steps");
        let n = noise.dims()[0];
        let prompts = self.setup.prompts.batch(&vec![cond.prompt_index(); n], &noise.device());
        let latents = self.chunk(noise, 0);
        let step_noise =
            (1..=steps).map(|k| if k < steps { self.chunk(noise, k) } else { latents.zeros_like() }).collect();
        (latents, step_noise, prompts)
    }
}
