//! Aligning a LoRA-adapted image generator (spec §5–§9) and its baseline, with the data-parallel
//! layout of §6: per step C classes (§6.2), K particles per class split over G ranks by the
//! global seed layout (§6.3), scores of own rows shared (§6.7), loss scale m/(K·C) and one SUM
//! all-reduce (§6.5), global-norm clip and AdamW (§6.6).
//!
//! Particles (§7): with the learned reward they are the encoder's L2-normalised embedding
//! (decode → encoder → features; gradients flow through the frozen encoder into the adapters);
//! with a JPEG reward they are the flattened pixels, and the reward's gradient is the NES
//! estimate of §9 (FAV-B). The reference is the same generator with its adapters off (§8).
//!
//! [`Method::Draft`] is the DRaFT baseline of §12 in the same harness: `−λ·mean r` backpropagated
//! through the last K sampling steps (DRaFT-K; all of them by default); it needs the
//! differentiable reward.

use super::encoder::{RewardModel, ScoreHead};
use super::family::ImageGenerator;
use super::generator::one_hot;
use super::jpeg::Jpeg;
use super::shapes::{CLASSES, PIXELS};
use crate::align::Layout;
use crate::checkpoint::CheckpointError;
use crate::config::RewardGrad;
use crate::lora::{LoraConfig, Targets};
use crate::noise::{self, Stream};
use crate::reward::{field_grad, Nes, NesKey, Reward};
use crate::svgd::{self, FieldConfig};
use crate::sync;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use fav_comm::{Collective, CommError};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Which reward an image run aligns to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageReward {
    /// The learned, differentiable score head on the encoder embedding.
    Learned,
    /// `−kB` of the JPEG encoding (§9.2), black-box.
    JpegCompress,
    /// `+kB` of the JPEG encoding, black-box.
    JpegIncompress,
}

impl ImageReward {
    /// This reward on its particles (§7): the score head on embeddings, or JPEG on pixels.
    pub fn on_particles(self, encoder: &RewardModel, device: &Device) -> Box<dyn Reward> {
        match self {
            ImageReward::Learned => Box::new(ScoreHead::new(encoder, device)),
            ImageReward::JpegCompress => Box::new(Jpeg::Compress),
            ImageReward::JpegIncompress => Box::new(Jpeg::Incompress),
        }
    }

    /// The particles of images: `encoder`'s embeddings (learned reward; gradients flow through
    /// the frozen encoder into the generator) or the flattened pixels (JPEG).
    pub fn particles(self, img: Tensor<4>, encoder: &RewardModel) -> Tensor<2> {
        match self {
            ImageReward::Learned => encoder.features(img),
            ImageReward::JpegCompress | ImageReward::JpegIncompress => {
                let n = img.dims()[0];
                img.reshape([n, PIXELS])
            }
        }
    }

    /// The reward of each image of a flat `[n, 3, 32, 32]` buffer.
    pub fn values(self, pixels: &[f32], encoder: &RewardModel, device: &Device) -> Vec<f32> {
        let img = super::encoder::images(pixels.to_vec(), pixels.len() / PIXELS, device);
        svgd::to_vec(&self.on_particles(encoder, device).value(&self.particles(img, encoder)))
    }
}

/// FAV or the DRaFT baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Fav,
    Draft,
}

/// Everything one image alignment step needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub reward: ImageReward,
    pub method: Method,
    pub field: FieldConfig,
    /// Particles per class and step (K), all ranks together.
    pub k: usize,
    /// Classes per step (C).
    pub c: usize,
    pub lr: f64,
    /// Global-norm clip (0 = off).
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub lora: LoraConfig,
    pub targets: Targets,
    /// The reward's own gradient or the NES estimate (FAV-B).
    pub reward_grad: RewardGrad,
    pub nes_sigma: f64,
    pub nes_samples: usize,
    /// DRaFT's reward multiplier λ.
    pub draft_multiplier: f64,
    /// DRaFT-K: backpropagate through the last K sampling steps (0: all of them).
    pub draft_k: usize,
}

/// §6.2: the classes of `step` — round-robin over a permutation of all classes, a new
/// permutation each time the round restarts, drawn from the run seed. A pure function of
/// `(seed, step)`, so a resumed run visits the same classes.
pub fn classes_of_step(seed: u64, step: usize, c: usize) -> Vec<usize> {
    let chunks = (CLASSES.len() / c).max(1);
    let (round, ci) = (step / chunks, step % chunks);
    let mut perm: Vec<usize> = (0..CLASSES.len()).collect();
    perm.shuffle(&mut noise::rng(seed, Stream::Conditions, round as u64));
    perm[ci * c..(ci + 1) * c].to_vec()
}

/// Seconds spent in each part of a step (this rank).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timings {
    /// Generator forward passes: aligned (with graph) and reference.
    pub generate: f64,
    /// Encoder forward passes (learned reward) — the particles.
    pub encode: f64,
    /// Reward gradient (autograd or NES), KDE score and transport field.
    pub field: f64,
    /// Backward pass and optimiser step.
    pub backward: f64,
    /// All-gathers and the gradient all-reduce.
    pub comm: f64,
}

impl Timings {
    pub fn add(&mut self, o: &Timings) {
        self.generate += o.generate;
        self.encode += o.encode;
        self.field += o.field;
        self.backward += o.backward;
        self.comm += o.comm;
    }
}

/// What one step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// FAV: the pseudo-loss `mean(v²)` over all particles; DRaFT: `−λ·mean r`.
    pub loss: f64,
    /// Mean reward of the step's generated particles (all ranks).
    pub reward: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub timings: Timings,
}

/// The generator noise (`dim` values each) of particle seeds `seeds`.
fn latents(seed: u64, seeds: impl Iterator<Item = u64>, n: usize, dim: usize, device: &Device) -> Tensor<2> {
    svgd::matrix(noise::normal_rows(seed, Stream::Particle, seeds, dim), n, dim, device)
}

/// One image alignment state.
pub struct ImageAligner<'c> {
    /// The adapted generator (base frozen, adapters trainable), on the autodiff device.
    pub net: ImageGenerator,
    /// The frozen encoder: plain for reference particles, on the autodiff device for generated ones.
    encoder: RewardModel,
    encoder_ad: RewardModel,
    /// The reward on particles.
    reward: Box<dyn Reward>,
    optim: burn::optim::ModuleOptimizer,
    s: Settings,
    layout: Layout,
    device: Device,
    comm: &'c dyn Collective,
}

impl<'c> ImageAligner<'c> {
    /// `base` and `encoder` must be the same on every rank. Adapter initialisation draws from the
    /// device generator, seeded here from the run seed.
    pub fn new(
        s: Settings,
        base: &ImageGenerator,
        encoder: &RewardModel,
        device: &Device,
        comm: &'c dyn Collective,
    ) -> Result<Self, String> {
        if s.method == Method::Draft && s.reward != ImageReward::Learned {
            return Err("DRaFT backpropagates the reward: it needs the learned (differentiable) reward".into());
        }
        if s.reward != ImageReward::Learned && s.reward_grad == RewardGrad::Exact {
            return Err(format!("{:?} is black-box: its gradient must be estimated (reward_grad = nes)", s.reward));
        }
        if s.c == 0 || !CLASSES.len().is_multiple_of(s.c) {
            return Err(format!("{} classes cannot be visited {} per step evenly", CLASSES.len(), s.c));
        }
        let layout = Layout::new(s.k, s.c, comm.size(), comm.rank())?;
        let ad = device.clone().autodiff();
        device.seed(rand::Rng::random(&mut noise::rng(s.seed, Stream::Init, 13)));
        let net = base.clone().to_device(&ad).adapt(s.lora, &s.targets, &ad).train();
        let optim = AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(s.weight_decay as f32)
            .init();
        Ok(Self {
            net,
            reward: s.reward.on_particles(encoder, device),
            encoder: encoder.clone(),
            encoder_ad: encoder.clone().to_device(&ad).no_grad(),
            optim,
            s,
            layout,
            device: device.clone(),
            comm,
        })
    }

    /// `g_i = ∇R(x_i)` of own rows (detached): the reward's gradient, or its NES estimate.
    fn reward_grad(&self, x: &Tensor<2>, seeds: &[u64], step: usize, ci: usize) -> Tensor<2> {
        let key = NesKey { seed: self.s.seed, step, condition: ci };
        let nes = Nes { particle_seeds: seeds, key, sigma: self.s.nes_sigma, samples: self.s.nes_samples };
        field_grad(self.reward.as_ref(), x, self.s.reward_grad, nes)
    }

    /// One step over the step's classes.
    pub fn step(&mut self, step: usize) -> Result<StepStats, CommError> {
        let ad = self.device.clone().autodiff();
        let Layout { k, c, .. } = self.layout;
        let own = self.layout.own();
        let mut t = Timings::default();
        let mut reference = self.net.valid();
        reference.set_adapters(false);
        let mut surrogate: Option<Tensor<1>> = None;
        let (mut loss_sum, mut reward_sum, mut d) = (0.0f64, 0.0f64, 1);
        for (ci, &class) in classes_of_step(self.s.seed, step, c).iter().enumerate() {
            let gen_seeds: Vec<u64> = self.layout.gen_seeds(step, ci).collect();
            let labels = vec![class; own];
            let clock = Instant::now();
            let z = latents(self.s.seed, gen_seeds.iter().copied(), own, self.net.noise_dim(), &ad);
            let img = match self.s.method {
                Method::Draft if self.s.draft_k > 0 => self.net.forward_last(z, one_hot(&labels, &ad), self.s.draft_k),
                _ => self.net.forward(z, one_hot(&labels, &ad)),
            };
            t.generate += clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let x = self.s.reward.particles(img, &self.encoder_ad);
            let xd = x.clone().detach().without_autodiff();
            d = xd.dims()[1];
            t.encode += clock.elapsed().as_secs_f64();
            let r_sum = svgd::to_vec(&self.reward.value(&xd)).iter().map(|&r| f64::from(r)).sum::<f64>();
            reward_sum += r_sum;
            let term = match self.s.method {
                Method::Draft => {
                    // −λ·mean r over all K·C particles: the local sum scaled by 1/(K·C), summed over
                    // ranks. Its gradient reaches the generator as x·stopgrad(∇r(x)), like FAV's.
                    let clock = Instant::now();
                    let g = self.reward.grad(&xd).expect("validated: DRaFT needs a differentiable reward");
                    t.field += clock.elapsed().as_secs_f64();
                    loss_sum -= self.s.draft_multiplier * r_sum;
                    (x * g.autodiff()).sum().mul_scalar(-self.s.draft_multiplier / (k * c) as f64)
                }
                Method::Fav => {
                    let clock = Instant::now();
                    let z =
                        latents(self.s.seed, self.layout.ref_seeds(step, ci), own, reference.noise_dim(), &self.device);
                    let ref_img = reference.forward(z, one_hot(&labels, &self.device));
                    t.generate += clock.elapsed().as_secs_f64();
                    let clock = Instant::now();
                    let y = self.s.reward.particles(ref_img, &self.encoder);
                    t.encode += clock.elapsed().as_secs_f64();
                    let clock = Instant::now();
                    let (x_all, y_all) = (self.gather(&xd)?, self.gather(&y)?);
                    t.comm += clock.elapsed().as_secs_f64();
                    let clock = Instant::now();
                    let g = self.reward_grad(&xd, &gen_seeds, step, ci);
                    let u_own = svgd::total_score(&xd, &y_all, &g, &self.s.field).total;
                    t.field += clock.elapsed().as_secs_f64();
                    let clock = Instant::now();
                    let u_all = self.gather(&u_own)?;
                    t.comm += clock.elapsed().as_secs_f64();
                    let clock = Instant::now();
                    let v = svgd::velocity(&xd, &x_all, &u_all, k, &self.s.field).velocity;
                    // ∂L/∂x = −2v/(m·D) per own chunk, scaled by m/(K·C) (§6.5).
                    let (loss_own, grad) = svgd::regression_grad(&v, own);
                    loss_sum += loss_own * (own * d) as f64;
                    t.field += clock.elapsed().as_secs_f64();
                    (x * grad.mul_scalar(own as f64 / (k * c) as f64).autodiff()).sum()
                }
            };
            surrogate = Some(match surrogate {
                Some(s) => s + term,
                None => term,
            });
        }
        let clock = Instant::now();
        let grads = GradientsParams::from_grads(surrogate.expect("≥ 1 class").backward(), &self.net);
        t.backward += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let (grads, grad_norm) =
            sync::all_reduce_grads(&self.net, grads, self.comm, &self.device, self.s.max_grad_norm)?;
        let mut totals = [loss_sum as f32, reward_sum as f32];
        self.comm.all_reduce_sum(&mut totals)?;
        t.comm += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        self.net = self.optim.step(self.s.lr, self.net.clone(), grads);
        t.backward += clock.elapsed().as_secs_f64();
        let loss = match self.s.method {
            Method::Fav => totals[0] as f64 / (k * c * d) as f64,
            Method::Draft => totals[0] as f64 / (k * c) as f64,
        };
        Ok(StepStats { loss, reward: totals[1] as f64 / (k * c) as f64, grad_norm, timings: t })
    }

    /// The optimiser state (AdamW moments of the adapters), for checkpoints.
    pub fn optimizer_bytes(&self) -> Result<bytes::Bytes, CheckpointError> {
        let b = self.optim.into_bytes().map_err(|e| CheckpointError::Format(e.to_string()))?;
        Ok(bytes::Bytes::copy_from_slice(&b))
    }

    /// Continue from a checkpoint: the adapted generator (record bytes, parameter ids included,
    /// so the optimiser state matches it) and its optimiser state. Which weights train is the
    /// module's own (base frozen, adapters trainable), not the record's.
    pub fn restore(&mut self, model: &bytes::Bytes, optimizer: &bytes::Bytes) -> Result<(), CheckpointError> {
        self.net = crate::checkpoint::load_record(self.net.clone(), model)?;
        let bytes = burn::tensor::Bytes::from_bytes_vec(optimizer.to_vec());
        let fresh = std::mem::replace(&mut self.optim, AdamWConfig::new().init());
        self.optim = fresh.from_bytes(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
        Ok(())
    }

    fn gather(&self, own: &Tensor<2>) -> Result<Tensor<2>, CommError> {
        sync::gather_rows(own, self.comm, &self.device)
    }

    /// The adapted generator without autodiff (adapters on).
    pub fn plain(&self) -> ImageGenerator {
        self.net.valid()
    }
}

/// Reward and diversity of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageEval {
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Mean pairwise Euclidean distance of encoder embeddings within a class, averaged over
    /// classes.
    pub diversity: f64,
    /// Fraction of samples the encoder's class head assigns to the class they were drawn for:
    /// whether alignment kept what the samples are (diversity alone does not see a class turning
    /// into another class's shape).
    #[serde(default)]
    pub class_accuracy: f64,
}

/// Evaluation noise of sample `i` of `class`, candidate `j` (best-of-N draws `j = 0..N`; plain
/// evaluation is `j = 0`): the same for every model, so before/after grids share seeds.
fn eval_latents(seed: u64, class: usize, per_class: usize, j: usize, dim: usize, device: &Device) -> Tensor<2> {
    let keys = (0..per_class as u64).map(|i| ((class as u64) << 40) | ((j as u64) << 20) | i);
    svgd::matrix(noise::normal_rows(seed, Stream::Eval, keys, dim), per_class, dim, device)
}

/// Samples `per_class` images of every class with `gen` (class-major), and their rewards.
fn sample_all(
    gen: &ImageGenerator,
    encoder: &RewardModel,
    reward: ImageReward,
    seed: u64,
    per_class: usize,
    j: usize,
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let mut px = Vec::with_capacity(CLASSES.len() * per_class * PIXELS);
    for class in 0..CLASSES.len() {
        let z = eval_latents(seed, class, per_class, j, gen.noise_dim(), device);
        let img = gen.forward(z, one_hot(&vec![class; per_class], device));
        px.extend(svgd::to_vec(&img.reshape([per_class, PIXELS])));
    }
    let r = reward.values(&px, encoder, device);
    (px, r)
}

/// Reward and within-class diversity of class-major `pixels` (`per_class` per class).
pub fn measure(pixels: &[f32], rewards: &[f32], per_class: usize, encoder: &RewardModel, device: &Device) -> ImageEval {
    let n = rewards.len() as f64;
    let mean = rewards.iter().map(|&r| f64::from(r)).sum::<f64>() / n;
    let var = rewards.iter().map(|&r| (f64::from(r) - mean).powi(2)).sum::<f64>() / n;
    let (mut div, mut hits) = (0.0, 0usize);
    for class in 0..CLASSES.len() {
        let chunk = &pixels[class * per_class * PIXELS..(class + 1) * per_class * PIXELS];
        let features = encoder.features(super::encoder::images(chunk.to_vec(), per_class, device));
        let predicted = encoder.classes.forward(features.clone()).argmax(1).to_data().convert::<i64>();
        hits += predicted.as_slice::<i64>().expect("i64").iter().filter(|&&p| p == class as i64).count();
        let f = svgd::to_vec(&features);
        let e = f.len() / per_class;
        let (mut sum, mut pairs) = (0.0, 0usize);
        for a in 0..per_class {
            for b in a + 1..per_class {
                let d2: f32 = (0..e).map(|i| (f[a * e + i] - f[b * e + i]).powi(2)).sum();
                sum += f64::from(d2).sqrt();
                pairs += 1;
            }
        }
        div += sum / pairs.max(1) as f64;
    }
    ImageEval {
        reward_mean: mean,
        reward_std: var.sqrt(),
        diversity: div / CLASSES.len() as f64,
        class_accuracy: hits as f64 / n,
    }
}

/// Evaluate `gen` on the fixed evaluation seeds: the numbers and the class-major pixels.
pub fn evaluate(
    gen: &ImageGenerator,
    encoder: &RewardModel,
    reward: ImageReward,
    seed: u64,
    per_class: usize,
    device: &Device,
) -> (ImageEval, Vec<f32>) {
    let (px, r) = sample_all(gen, encoder, reward, seed, per_class, 0, device);
    (measure(&px, &r, per_class, encoder, device), px)
}

/// Best-of-N sampling from `gen` for each N of `ns` (ascending): every evaluation slot keeps the
/// best-rewarded of its first N candidates. N = 1 is plain evaluation.
pub fn best_of_n(
    gen: &ImageGenerator,
    encoder: &RewardModel,
    reward: ImageReward,
    seed: u64,
    per_class: usize,
    ns: &[usize],
    device: &Device,
) -> Vec<(usize, ImageEval)> {
    let mut best: Option<(Vec<f32>, Vec<f32>)> = None;
    let mut out = Vec::new();
    let max = ns.iter().copied().max().unwrap_or(0);
    for j in 0..max {
        let (px, r) = sample_all(gen, encoder, reward, seed, per_class, j, device);
        best = Some(match best {
            None => (px, r),
            Some((mut bp, mut br)) => {
                for i in 0..r.len() {
                    if r[i] > br[i] {
                        br[i] = r[i];
                        bp[i * PIXELS..(i + 1) * PIXELS].copy_from_slice(&px[i * PIXELS..(i + 1) * PIXELS]);
                    }
                }
                (bp, br)
            }
        });
        if ns.contains(&(j + 1)) {
            let (bp, br) = best.as_ref().expect("drawn");
            out.push((j + 1, measure(bp, br, per_class, encoder, device)));
        }
    }
    out
}
