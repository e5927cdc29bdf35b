//! The one data-parallel FAV step of spec §6, for every task: per condition, K particles split
//! over G ranks by the global seed layout (§6.3); the own rows generated and mapped to particles
//! (generator, then φ); the reference set (§8: a pool of frozen-model samples, or the frozen
//! model itself on its own seeds, gathered); all-gather the particles; each rank scores its own
//! rows (§6.7) and all-gathers the scores; each rank moves its own rows against the global set;
//! local loss scale m/(K·C) (§6.5); one SUM all-reduce of the trainable gradients, the global-norm
//! clip (§6.6) and the same optimiser step everywhere. With G = 1 this is the single-process step.
//!
//! The DRaFT baseline (§12) shares everything but the target: `−λ·mean r` backpropagated.

use crate::checkpoint::{self, CheckpointError};
use crate::config::RewardGrad;
use crate::data::Condition;
use crate::models::Generator;
use crate::noise::{self, Stream};
use crate::rewards::{field_grad, FeatureMap, Nes, NesKey, Reward};
use crate::svgd::{self, FieldConfig};
use crate::sync;
use crate::tensors::{matrix, read, DeviceError};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use bytes::Bytes;
use fav_comm::{Collective, CommError};
use rand::Rng;
use serde::Serialize;
use std::rc::Rc;
use std::time::Instant;

/// How one step's particles are split: C conditions × K particles over G ranks (§6.1).
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Particles per condition, all ranks together.
    pub k: usize,
    /// Conditions per step.
    pub c: usize,
    /// Ranks.
    pub g: usize,
    pub rank: usize,
}

impl Layout {
    /// Refuses layouts that cannot be split evenly, naming the numbers.
    pub fn new(k: usize, c: usize, g: usize, rank: usize) -> Result<Self, String> {
        if g > k {
            return Err(format!(
                "{g} ranks but only fav.batch = {k} particles per condition: more ranks than particles"
            ));
        }
        if !k.is_multiple_of(g) {
            return Err(format!(
                "fav.batch = {k} particles per condition cannot be split evenly over {g} ranks (K mod G = {})",
                k % g
            ));
        }
        Ok(Self { k, c, g, rank })
    }

    /// Particles this rank owns per condition.
    pub fn own(&self) -> usize {
        self.k / self.g
    }

    /// The first global row this rank owns.
    pub fn first_row(&self) -> usize {
        self.rank * self.own()
    }

    /// §6.3: `pbase = step·C·K·2 + ci·2K`; reference seeds are `pbase + [0, K)`, generator seeds
    /// `pbase + K + [0, K)`, and rank r takes elements `[r·K/G, (r+1)·K/G)` of each.
    fn own_seeds(&self, step: usize, ci: usize, offset: usize) -> std::ops::Range<u64> {
        let pbase = (step * self.c * self.k * 2 + ci * 2 * self.k) as u64;
        let first = pbase + (offset + self.first_row()) as u64;
        first..first + self.own() as u64
    }

    /// This rank's generator seeds for condition `ci` at `step`.
    pub fn gen_seeds(&self, step: usize, ci: usize) -> std::ops::Range<u64> {
        self.own_seeds(step, ci, self.k)
    }

    /// This rank's reference seeds for condition `ci` at `step`.
    pub fn ref_seeds(&self, step: usize, ci: usize) -> std::ops::Range<u64> {
        self.own_seeds(step, ci, 0)
    }
}

/// Samples of the frozen base, drawn once before alignment (§8, toy). Each rank draws its share
/// of the rows and the shares are all-gathered, so every rank holds the whole pool. `Err`: the
/// gather, or the device drawing this rank's share, failed.
pub struct RefPool {
    rows: Vec<f32>,
    n: usize,
    d: usize,
}

const POOL_CHUNK: usize = 10_000;

impl RefPool {
    pub fn draw<G: Generator>(
        seed: u64,
        size: usize,
        steps: usize,
        base: &G,
        device: &Device,
        comm: &dyn Collective,
    ) -> Result<Self, sync::ShareError> {
        let g = comm.size();
        let share = size.div_ceil(g);
        let (lo, hi) = ((comm.rank() * share).min(size), ((comm.rank() + 1) * share).min(size));
        let dim = base.noise_dim();
        let mut mine = Vec::new();
        let mut d = 0;
        let mut start = lo;
        while start < hi {
            let end = (start + POOL_CHUNK).min(hi);
            let z = noise::normal_rows(seed, Stream::RefPool, start as u64..end as u64, dim);
            let x = base.sample(matrix(z, end - start, dim, device), Condition::None, steps, None);
            d = x.dims()[1];
            mine.extend(read(&x)?);
            start = end;
        }
        // Every rank needs D for the padding, even one that drew nothing.
        let d = if d == 0 {
            base.sample(matrix(vec![0.0; dim], 1, dim, device), Condition::None, steps, None).dims()[1]
        } else {
            d
        };
        mine.resize(d * share, 0.0); // equal blocks for the gather; the padding is cut below
        let mut rows = comm.all_gather(&mine)?;
        rows.truncate(d * size);
        Ok(Self { rows, n: size, d })
    }

    /// Condition `ci`'s reference minibatch at `step`: `m` pool indices drawn uniformly with
    /// replacement, the same on every rank.
    pub fn minibatch(&self, seed: u64, step: usize, ci: usize, m: usize, device: &Device) -> Tensor<2> {
        let mut r = noise::rng(seed, Stream::RefPool, (1 << 48) | ((step as u64) << 8) | ci as u64);
        let d = self.d;
        let rows: Vec<f32> = (0..m)
            .flat_map(|_| {
                let i = r.random_range(0..self.n);
                self.rows[d * i..d * (i + 1)].to_vec()
            })
            .collect();
        matrix(rows, m, d, device)
    }
}

/// Where the reference particles of a condition come from (§8).
pub enum Reference<G> {
    /// A minibatch of `batch` rows from a pool of frozen-model samples (the toy), the same on
    /// every rank.
    Pool { pool: RefPool, batch: usize },
    /// The frozen base on the reference seeds (the adapters off), each rank its own rows,
    /// gathered.
    Model(G),
}

/// What the generator is regressed onto.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// FAV: `stopgrad(x + v)` (§4).
    Fav,
    /// DRaFT: `−λ·mean r`, backpropagated through the last `grad_steps` sampling steps (all
    /// when `None`).
    Draft { multiplier: f64, grad_steps: Option<usize> },
}

/// The fixed settings of a step.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    pub field: FieldConfig,
    pub objective: Objective,
    /// Sampling steps of the generator.
    pub sample_steps: usize,
    pub lr: f64,
    /// Global-norm gradient clip (0 = off).
    pub max_grad_norm: f64,
    /// The reward's own gradient or the NES estimate (FAV-B).
    pub reward_grad: RewardGrad,
    pub nes_sigma: f64,
    pub nes_samples: usize,
    /// Steps with a non-finite quantity that may be skipped (no update) before the job stops;
    /// 0: the first one stops it.
    pub nonfinite_skips: usize,
    /// Own rows generated at once (§6.4); 0: all of them in one pass.
    pub micro_batch: usize,
    /// Gradient checkpointing: the generator recomputes its steps in the backward pass instead
    /// of keeping their activations ([`Generator::accumulate_grads`]).
    pub checkpointing: bool,
}

impl Settings {
    /// The step settings of `cfg` (`fav.*`) for `objective` with `sample_steps` sampling steps.
    pub fn new(cfg: &crate::config::Config, objective: Objective, sample_steps: usize) -> Self {
        let f = &cfg.fav;
        Self {
            seed: cfg.seed,
            field: cfg.field(),
            objective,
            sample_steps,
            lr: f.lr,
            max_grad_norm: f.max_grad_norm,
            reward_grad: f.reward_grad,
            nes_sigma: f.nes_sigma,
            nes_samples: f.nes_samples,
            nonfinite_skips: match f.nonfinite {
                crate::config::NonFinite::Stop => 0,
                crate::config::NonFinite::Skip => f.nonfinite_skips,
            },
            checkpointing: cfg.task == crate::config::Task::T2i
                && (cfg.t2i.gradient_checkpointing || cfg.t2i.decoder_checkpointing),
            micro_batch: if cfg.task == crate::config::Task::T2i { cfg.t2i.micro_batch } else { 0 },
        }
    }
}

/// What a step checks for finiteness, in the order it computes them.
pub const CHECKED: [&str; 7] =
    ["particles", "reward", "reward gradient", "total score", "field", "loss", "gradient norm"];

/// Why a step could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Comm(#[from] CommError),
    /// A non-finite quantity (one of [`CHECKED`], or `parameters` after the update), seen by
    /// every rank at once.
    #[error("non-finite {what} at step {step}")]
    NonFinite { what: &'static str, step: usize },
    /// The device failed (out of memory, a faulted kernel), seen at a readback on this rank.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl From<sync::ShareError> for StepError {
    fn from(e: sync::ShareError) -> Self {
        match e {
            sync::ShareError::Comm(e) => StepError::Comm(e),
            sync::ShareError::Device(e) => StepError::Device(e),
        }
    }
}

/// Whether every value is finite.
fn finite(t: &Tensor<2>) -> Result<bool, DeviceError> {
    Ok(read(t)?.iter().all(|v| v.is_finite()))
}

/// Run `f`, adding its seconds to `slot`.
fn timed<T>(slot: &mut f64, f: impl FnOnce() -> T) -> T {
    let clock = Instant::now();
    let out = f();
    *slot += clock.elapsed().as_secs_f64();
    out
}

/// Seconds spent in each part of a step (this rank).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct Timings {
    /// Generator passes: aligned (with graph) and reference.
    pub generate: f64,
    /// The feature map φ (an encoder, or nothing) — the particles.
    pub encode: f64,
    /// Reward gradient (autograd or NES), KDE score and transport field.
    pub field: f64,
    /// Backward pass and optimiser step.
    pub backward: f64,
    /// The all-gathers and the gradient all-reduce.
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

    /// The mean over `n` steps.
    pub fn mean(&self, n: usize) -> Timings {
        let n = n.max(1) as f64;
        Timings {
            generate: self.generate / n,
            encode: self.encode / n,
            field: self.field / n,
            backward: self.backward / n,
            comm: self.comm / n,
        }
    }
}

/// What one step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// FAV: the pseudo-loss `mean(v²)` over all particles of all conditions (all ranks); DRaFT:
    /// `−λ·mean r`.
    pub loss: f64,
    /// Mean reward of the step's generated particles (all ranks).
    pub reward: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub timings: Timings,
    /// The step was skipped (no update) for this non-finite quantity (`fav.nonfinite = "skip"`).
    pub skipped: Option<&'static str>,
}

/// What the run loop drives, whatever the task: one step, the state to checkpoint, a resume.
pub trait Trainer {
    /// One step; a non-finite quantity is refused on every rank alike (the update is skipped,
    /// or the step fails, as `fav.nonfinite` says).
    fn step(&mut self, step: usize) -> Result<StepStats, StepError>;
    /// SHA-256 of the trainable module's parameters (first 8 bytes): equal on every rank.
    fn digest(&self) -> Result<[u8; 8], DeviceError>;
    /// The trainable module (record bytes, parameter ids included) and its optimiser state.
    fn state(&self) -> Result<(Bytes, Bytes), CheckpointError>;
    /// Continue from [`Trainer::state`] bytes.
    fn restore(&mut self, model: &Bytes, optimizer: &Bytes) -> Result<(), CheckpointError>;
}

/// One alignment state: the trainable generator, its optimiser and everything fixed. Every
/// rank builds the same one.
pub struct Aligner<'c, G: Generator> {
    /// The generator being aligned, on the autodiff device; which parameters train is its own
    /// (all of a toy network; the adapters of a LoRA-adapted one).
    pub net: G,
    pub reference: Reference<G>,
    pub features: Rc<dyn FeatureMap>,
    pub reward: Rc<dyn Reward>,
    /// The conditions of each step (§6.2).
    pub schedule: Box<dyn Fn(usize) -> Vec<Condition>>,
    pub optim: ModuleOptimizer,
    pub s: Settings,
    pub layout: Layout,
    pub device: Device,
    pub comm: &'c dyn Collective,
    /// Steps skipped so far for a non-finite quantity.
    pub skipped: usize,
}

/// The image runs' optimiser (spec §11): AdamW, betas (0.9, 0.95), ε 1e-8.
pub fn adamw(weight_decay: f64) -> ModuleOptimizer {
    burn::optim::AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.95)
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
        .init()
}

impl<G: Generator> Aligner<'_, G> {
    fn gather(&self, own: &Tensor<2>) -> Result<Tensor<2>, StepError> {
        Ok(sync::gather_rows(own, self.comm, &self.device)?)
    }

    /// Generator noise of `seeds` on `device`.
    fn noise(&self, seeds: impl Iterator<Item = u64>, n: usize, device: &Device) -> Tensor<2> {
        let dim = self.net.noise_dim();
        matrix(noise::normal_rows(self.s.seed, Stream::Particle, seeds, dim), n, dim, device)
    }

    /// The reference particles of condition `ci` at `step`, the whole set on every rank.
    fn reference(&self, step: usize, ci: usize, cond: Condition, t: &mut Timings) -> Result<Tensor<2>, StepError> {
        match &self.reference {
            Reference::Pool { pool, batch } => Ok(pool.minibatch(self.s.seed, step, ci, *batch, &self.device)),
            Reference::Model(base) => {
                let z = self.noise(self.layout.ref_seeds(step, ci), self.layout.own(), &self.device);
                let samples = timed(&mut t.generate, || base.sample(z, cond, self.s.sample_steps, None));
                let y = timed(&mut t.encode, || self.features.features(samples));
                timed(&mut t.comm, || self.gather(&y))
            }
        }
    }
}

impl<G: Generator> Trainer for Aligner<'_, G> {
    /// One step over the step's conditions.
    fn step(&mut self, step: usize) -> Result<StepStats, StepError> {
        let ad = self.device.clone().autodiff();
        let Layout { k, c, .. } = self.layout;
        let own = self.layout.own();
        let mut t = Timings::default();
        let (mut loss_sum, mut reward_sum, mut d) = (0.0f64, 0.0f64, 1);
        // Per quantity of CHECKED: whether this rank saw it non-finite (summed over ranks below).
        let mut bad = [0.0f32; 5];
        let mut acc = burn::optim::GradientsAccumulator::<G>::new();
        // §6.4: rows generated at once. Fewer than the own rows: a first pass without a graph for
        // the field, then the gradient pass regenerates each chunk with one.
        let chunk = if self.s.micro_batch == 0 { own } else { self.s.micro_batch.min(own) };
        for (ci, cond) in (self.schedule)(step).into_iter().enumerate() {
            let gen_seeds: Vec<u64> = self.layout.gen_seeds(step, ci).collect();
            let grad_steps = match self.s.objective {
                Objective::Draft { grad_steps, .. } => grad_steps,
                Objective::Fav => None,
            };
            // One pass with its graph when it holds every own row and nothing is recomputed.
            let (x, xd) = if chunk == own && !self.s.checkpointing {
                let samples = timed(&mut t.generate, || {
                    let z = self.noise(gen_seeds.iter().copied(), own, &ad);
                    self.net.sample(z, cond, self.s.sample_steps, grad_steps)
                });
                let x = timed(&mut t.encode, || self.features.features(samples));
                // §3.4: the field is computed on detached particles, off the autodiff graph.
                let xd = x.clone().detach().without_autodiff();
                (Some(x), xd)
            } else {
                let plain = self.net.valid();
                let parts: Vec<Tensor<2>> = gen_seeds
                    .chunks(chunk)
                    .map(|seeds| {
                        let samples = timed(&mut t.generate, || {
                            let z = self.noise(seeds.iter().copied(), seeds.len(), &self.device);
                            plain.sample(z, cond, self.s.sample_steps, grad_steps)
                        });
                        timed(&mut t.encode, || self.features.features(samples))
                    })
                    .collect();
                (None, Tensor::cat(parts, 0))
            };
            d = xd.dims()[1];
            bad[0] += f32::from(!finite(&xd)?);
            let r_sum = read(&self.reward.value(&xd, cond)?)?.iter().map(|&r| f64::from(r)).sum::<f64>();
            bad[1] += f32::from(!r_sum.is_finite());
            reward_sum += r_sum;
            // ∂L/∂x of the own rows, already scaled for the SUM all-reduce (§6.5).
            let grad = match self.s.objective {
                Objective::Draft { multiplier, .. } => {
                    // −λ·mean r over all K·C particles: the local sum scaled by 1/(K·C), summed
                    // over ranks; it reaches the generator as x·stopgrad(∇r(x)).
                    let g = timed(&mut t.field, || self.reward.grad(&xd, cond))
                        .expect("validated: DRaFT needs a differentiable reward");
                    bad[2] += f32::from(!finite(&g)?);
                    loss_sum -= multiplier * r_sum;
                    g.mul_scalar(-multiplier / (k * c) as f64)
                }
                Objective::Fav => {
                    let y_all = self.reference(step, ci, cond, &mut t)?;
                    let x_all = timed(&mut t.comm, || self.gather(&xd))?;
                    // §6.7: scores of own rows only, then shared. A black-box gradient is
                    // estimated once per particle, by the rank that owns it.
                    let g = timed(&mut t.field, || {
                        let key = NesKey { seed: self.s.seed, step, condition: ci };
                        let (sigma, samples) = (self.s.nes_sigma, self.s.nes_samples);
                        let nes = Nes { particle_seeds: &gen_seeds, key, sigma, samples };
                        field_grad(self.reward.as_ref(), &xd, cond, self.s.reward_grad, nes)
                    })?;
                    bad[2] += f32::from(!finite(&g)?);
                    let u_own = timed(&mut t.field, || svgd::total_score(&xd, &y_all, &g, &self.s.field))?.total;
                    bad[3] += f32::from(!finite(&u_own)?);
                    let u_all = timed(&mut t.comm, || self.gather(&u_own))?;
                    let v = timed(&mut t.field, || {
                        let first = self.layout.first_row();
                        svgd::velocity(&xd, &x_all, &u_all, k, first, &self.s.field)
                    })?
                    .velocity;
                    bad[4] += f32::from(!finite(&v)?);
                    // ∂L/∂x = −2v/(m·D) per chunk of m own rows, scaled by m/(K·C): −2v/(K·D·C).
                    let (loss_own, grad) = svgd::regression_grad(&v, own)?;
                    loss_sum += loss_own * (own * d) as f64;
                    grad.mul_scalar(own as f64 / (k * c) as f64)
                }
            };
            // Backward now, condition by condition (chunk by chunk): one graph alive at a time.
            match x {
                Some(x) => {
                    let grads = timed(&mut t.backward, || {
                        GradientsParams::from_grads((x * grad.autodiff()).sum().backward(), &self.net)
                    });
                    acc.accumulate(&self.net, grads);
                }
                None => {
                    for a in (0..own).step_by(chunk) {
                        let b = (a + chunk).min(own);
                        let g = grad.clone().slice([a..b, 0..d]);
                        // The samples' cotangent: ∂L/∂x back through φ (its own graph).
                        let cotangent = |samples: Tensor<2>| {
                            let s = samples.autodiff().require_grad();
                            let grads = (self.features.features(s.clone()) * g.clone().autodiff()).sum().backward();
                            s.grad(&grads).expect("the samples carry the graph")
                        };
                        timed(&mut t.backward, || {
                            let z = self.noise(gen_seeds[a..b].iter().copied(), b - a, &ad);
                            self.net.accumulate_grads(z, cond, self.s.sample_steps, grad_steps, &cotangent, &mut acc)
                        });
                    }
                }
            }
        }
        let grads = acc.grads();
        let mut totals = [loss_sum as f32, reward_sum as f32, bad[0], bad[1], bad[2], bad[3], bad[4]];
        let (grads, grad_norm) = timed(&mut t.comm, || {
            let reduced = sync::all_reduce_grads(&self.net, grads, self.comm, &self.device, self.s.max_grad_norm)?;
            self.comm.all_reduce_sum(&mut totals)?;
            Ok::<_, StepError>(reduced)
        })?;
        let loss = match self.s.objective {
            Objective::Fav => totals[0] as f64 / (k * c * d) as f64,
            Objective::Draft { .. } => totals[0] as f64 / (k * c) as f64,
        };
        let reward = totals[1] as f64 / (k * c) as f64;
        // The first quantity any rank saw non-finite, then the global loss and gradient norm:
        // every rank holds the same numbers, so all decide alike.
        let seen = (0..5).find(|&i| totals[2 + i] > 0.0).map(|i| CHECKED[i]);
        let bad_now =
            seen.or((!loss.is_finite()).then_some(CHECKED[5])).or((!grad_norm.is_finite()).then_some(CHECKED[6]));
        if let Some(what) = bad_now {
            if self.skipped >= self.s.nonfinite_skips {
                return Err(StepError::NonFinite { what, step });
            }
            self.skipped += 1;
            tracing::warn!(step, skipped = self.skipped, "non-finite {what}: step skipped, no update");
            return Ok(StepStats { loss, reward, grad_norm, timings: t, skipped: Some(what) });
        }
        let next = timed(&mut t.backward, || self.optim.step(self.s.lr, self.net.clone(), grads));
        // The update itself can overflow (a huge learning rate): never keep such weights.
        if !sync::all_finite(&next)? {
            return Err(StepError::NonFinite { what: "parameters", step });
        }
        self.net = next;
        Ok(StepStats { loss, reward, grad_norm, timings: t, skipped: None })
    }

    fn digest(&self) -> Result<[u8; 8], DeviceError> {
        sync::digest(&self.net)
    }

    fn state(&self) -> Result<(Bytes, Bytes), CheckpointError> {
        // burn reads the optimiser's moments itself and panics where the device failed: the
        // weights' readback first (it returns such a failure), then burn's, caught.
        let model = checkpoint::trainable_bytes(&self.net)?;
        let optim = crate::tensors::catching("reading the optimiser state", || self.optim.into_bytes())
            .map_err(|e| CheckpointError::Format(format!("the device failed: {e}")))?
            .map_err(|e| CheckpointError::Format(e.to_string()))?;
        Ok((model, Bytes::copy_from_slice(&optim)))
    }

    /// The trainable parameters with their ids (so the optimiser state matches them) and the
    /// optimiser state; the frozen rest is what the task built.
    fn restore(&mut self, model: &Bytes, optimizer: &Bytes) -> Result<(), CheckpointError> {
        self.net = checkpoint::load_trainable(self.net.clone(), model)?;
        let bytes = burn::tensor::Bytes::from_bytes_vec(optimizer.to_vec());
        let placeholder = burn::optim::AdamConfig::new().init();
        let optim = std::mem::replace(&mut self.optim, placeholder);
        self.optim = optim.from_bytes(bytes).map_err(|e| CheckpointError::Format(e.to_string()))?;
        Ok(())
    }
}

impl<G: Generator> Aligner<'_, G> {
    /// The aligned generator without autodiff, for sampling and saving.
    pub fn plain(&self) -> G {
        self.net.valid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::models::toy::VaeDecoder;
    use crate::models::Family;
    use crate::rewards::Identity;
    use burn::module::Module;

    /// A black box whose device work fails: on every call, or only on NES's perturbed copies
    /// (more rows than the step's particles), as a GPU out of memory there would.
    struct Failing {
        rows_ok: usize,
    }

    impl Reward for Failing {
        fn value(&self, x: &Tensor<2>, _: Condition) -> Result<Tensor<2>, DeviceError> {
            let n = x.dims()[0];
            if n > self.rows_ok {
                return Err(DeviceError("out of device memory allocating 4096 bytes".into()));
            }
            Ok(x.clone().sum_dim(1))
        }

        fn grad(&self, _: &Tensor<2>, _: Condition) -> Option<Tensor<2>> {
            None
        }

        fn black_box(&self) -> bool {
            true
        }
    }

    /// A device failure seen by the reward (its values, or the NES estimate's) ends the step with
    /// that error — not a panic, not a skipped step — and the weights are not updated.
    #[test]
    fn a_device_failure_in_the_reward_ends_the_step_with_the_error() {
        let mut cfg = Config::default();
        cfg.fav.batch = 4;
        cfg.fav.conditions = 1;
        cfg.fav.reward_grad = RewardGrad::Nes;
        let device = Device::flex();
        let base = VaeDecoder::init(&cfg, &device);
        for rows_ok in [0, cfg.fav.batch] {
            let mut aligner = Aligner {
                net: base.clone().to_device(&device.clone().autodiff()).train().set_require_grad(true),
                reference: Reference::Model(base.clone()),
                features: Rc::new(Identity),
                reward: Rc::new(Failing { rows_ok }),
                schedule: Box::new(|_| vec![Condition::None]),
                optim: adamw(0.0),
                s: Settings::new(&cfg, Objective::Fav, cfg.model.sample_steps),
                layout: Layout::new(cfg.fav.batch, 1, 1, 0).unwrap(),
                device: device.clone(),
                comm: &fav_comm::SingleProcess,
                skipped: 0,
            };
            let before = sync::digest(&aligner.net).unwrap();
            match aligner.step(0) {
                Err(StepError::Device(e)) => assert!(e.out_of_memory(), "{e}"),
                other => panic!("rows_ok {rows_ok}: expected the device failure, got {:?}", other.map(|s| s.loss)),
            }
            assert_eq!(sync::digest(&aligner.net).unwrap(), before, "rows_ok {rows_ok}: the weights moved");
            assert_eq!(aligner.skipped, 0, "a device failure is not a non-finite step to skip");
        }
    }
}
