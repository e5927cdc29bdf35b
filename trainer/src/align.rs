//! FAV fine-tuning of a toy generator (spec §5, §10.3) as the data-parallel step of spec §6:
//! per condition, K particles split over G ranks by the global seed layout; all-gather the
//! particles; each rank scores its own rows (§6.7) and all-gathers the scores; each rank moves its
//! own rows against the global set; local loss scale m/(K·C); one SUM all-reduce of the
//! gradients; the same optimiser step everywhere. With G = 1 this is the single-process step.

use crate::config::{Config, RewardGrad};
use crate::generators::{Mlp, Sampler};
use crate::noise::{self, Stream};
use crate::reward::{field_grad, Nes, NesKey};
use crate::svgd::{self, FieldConfig};
use crate::sync;
use crate::toy::ClusterReward;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use fav_comm::{Collective, CommError};
use rand::Rng;

/// Samples of the frozen base generator, drawn once before alignment (§8, toy). Each rank draws
/// its share of the rows and the shares are all-gathered, so every rank holds the whole pool.
pub struct RefPool {
    rows: Vec<f32>,
    n: usize,
}

const POOL_CHUNK: usize = 10_000;

impl RefPool {
    pub fn draw(
        seed: u64,
        size: usize,
        sampler: &Sampler,
        base: &Mlp,
        device: &Device,
        comm: &dyn Collective,
    ) -> Result<Self, CommError> {
        let g = comm.size();
        let share = size.div_ceil(g);
        let (lo, hi) = ((comm.rank() * share).min(size), ((comm.rank() + 1) * share).min(size));
        let mut mine = Vec::with_capacity(2 * share);
        let mut start = lo;
        while start < hi {
            let end = (start + POOL_CHUNK).min(hi);
            let z = noise::normal_rows(seed, Stream::RefPool, start as u64..end as u64, sampler.noise_dim());
            let z = svgd::matrix(z, end - start, sampler.noise_dim(), device);
            mine.extend(svgd::to_vec(&sampler.generate(base, z)));
            start = end;
        }
        mine.resize(2 * share, 0.0); // equal blocks for the gather; the padding is cut below
        let mut rows = comm.all_gather(&mine)?;
        rows.truncate(2 * size);
        Ok(Self { rows, n: size })
    }

    /// Condition `ci`'s reference minibatch at `step`: `m` pool indices drawn uniformly with
    /// replacement, the same on every rank.
    pub fn minibatch(&self, seed: u64, step: usize, ci: usize, m: usize, device: &Device) -> Tensor<2> {
        let mut r = noise::rng(seed, Stream::RefPool, (1 << 48) | ((step as u64) << 8) | ci as u64);
        let rows: Vec<f32> = (0..m)
            .flat_map(|_| {
                let i = r.random_range(0..self.n);
                [self.rows[2 * i], self.rows[2 * i + 1]]
            })
            .collect();
        svgd::matrix(rows, m, 2, device)
    }
}

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

    /// §6.3: `pbase = step·C·K·2 + ci·2K`; reference seeds are `pbase + [0, K)`, generator seeds
    /// `pbase + K + [0, K)`, and rank r takes elements `[r·K/G, (r+1)·K/G)` of each.
    fn own_seeds(&self, step: usize, ci: usize, offset: usize) -> std::ops::Range<u64> {
        let pbase = (step * self.c * self.k * 2 + ci * 2 * self.k) as u64;
        let first = pbase + (offset + self.rank * self.own()) as u64;
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

/// One alignment state: the trainable network, its optimiser and the fixed pieces.
pub struct Aligner<'c> {
    pub net: Mlp,
    optim: burn::optim::ModuleOptimizer,
    sampler: Sampler,
    field: FieldConfig,
    reward: ClusterReward,
    pool: RefPool,
    layout: Layout,
    seed: u64,
    ref_batch: usize,
    lr: f64,
    max_grad_norm: f64,
    reward_grad: RewardGrad,
    nes_sigma: f64,
    nes_samples: usize,
    device: Device,
    comm: &'c dyn Collective,
}

/// What one step reports.
pub struct StepStats {
    /// The pseudo-loss `mean(v²)` over all particles of all conditions (all ranks).
    pub loss: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    #[error("{0}")]
    Layout(String),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error("cannot broadcast the base generator: {0}")]
    Broadcast(String),
}

impl<'c> Aligner<'c> {
    /// `base` must be the same on every rank (see [`sync::broadcast_module`]).
    pub fn new(
        cfg: &Config,
        sampler: Sampler,
        base: &Mlp,
        device: &Device,
        comm: &'c dyn Collective,
    ) -> Result<Self, AlignError> {
        let layout =
            Layout::new(cfg.fav.batch, cfg.fav.conditions, comm.size(), comm.rank()).map_err(AlignError::Layout)?;
        let pool = RefPool::draw(cfg.seed, cfg.fav.ref_pool, &sampler, base, device, comm)?;
        let adam = AdamConfig::new().with_epsilon(1e-8);
        Ok(Self {
            net: base.clone().to_device(&device.clone().autodiff()).train().set_require_grad(true),
            optim: adam.init(),
            sampler,
            field: cfg.field(),
            reward: ClusterReward::new(device),
            pool,
            layout,
            seed: cfg.seed,
            ref_batch: cfg.fav.ref_batch,
            lr: cfg.fav.lr,
            max_grad_norm: cfg.fav.max_grad_norm,
            reward_grad: cfg.fav.reward_grad,
            nes_sigma: cfg.fav.nes_sigma,
            nes_samples: cfg.fav.nes_samples,
            device: device.clone(),
            comm,
        })
    }

    /// One FAV step over all conditions.
    pub fn step(&mut self, step: usize) -> Result<StepStats, CommError> {
        let ad = self.device.clone().autodiff();
        let Layout { k, c, .. } = self.layout;
        let dim = self.sampler.noise_dim();
        let mut surrogate: Option<Tensor<1>> = None;
        let mut v_sq_sum = 0.0f64;
        let mut d = 0;
        for ci in 0..c {
            let seeds = self.layout.gen_seeds(step, ci);
            let z = noise::normal_rows(self.seed, Stream::Particle, seeds.clone(), dim);
            let x = self.sampler.generate(&self.net, svgd::matrix(z, self.layout.own(), dim, &ad));
            // §3.4: the field is computed on detached particles, off the autodiff graph.
            let xd = x.clone().detach().without_autodiff();
            d = xd.dims()[1];
            let x_all = self.gather(&xd)?;
            let y = self.pool.minibatch(self.seed, step, ci, self.ref_batch, &self.device);
            // §6.7: scores of own rows only, then shared. A black-box gradient is estimated once
            // per particle, by the rank that owns it.
            let seeds: Vec<u64> = seeds.collect();
            let key = NesKey { seed: self.seed, step, condition: ci };
            let nes = Nes { particle_seeds: &seeds, key, sigma: self.nes_sigma, samples: self.nes_samples };
            let g = field_grad(&self.reward, &xd, self.reward_grad, nes);
            let u_own = svgd::total_score(&xd, &y, &g, &self.field).total;
            let u_all = self.gather(&u_own)?;
            let v = svgd::velocity(&xd, &x_all, &u_all, k, &self.field).velocity;
            // ∂L/∂x = −2v/(m·D) per chunk of m own rows, scaled by m/(K·C) (§6.5): −2v/(K·D·C).
            let (loss_own, grad) = svgd::regression_grad(&v, self.layout.own());
            v_sq_sum += loss_own * (self.layout.own() * d) as f64;
            let grad = grad.mul_scalar(self.layout.own() as f64 / (k * c) as f64);
            let term = (x * grad.autodiff()).sum();
            surrogate = Some(match surrogate {
                Some(s) => s + term,
                None => term,
            });
        }
        let surrogate = surrogate.expect("fav.conditions ≥ 1");
        let grads = GradientsParams::from_grads(surrogate.backward(), &self.net);
        let (grads, _) = sync::all_reduce_grads(&self.net, grads, self.comm, &self.device, self.max_grad_norm)?;
        self.net = self.optim.step(self.lr, self.net.clone(), grads);
        let mut total = [v_sq_sum as f32];
        self.comm.all_reduce_sum(&mut total)?;
        Ok(StepStats { loss: total[0] as f64 / (k * c * d) as f64 })
    }

    fn gather(&self, own: &Tensor<2>) -> Result<Tensor<2>, CommError> {
        sync::gather_rows(own, self.comm, &self.device)
    }

    /// The optimiser state as burn record bytes (keyed by the network's parameter ids).
    pub fn optimizer_bytes(&self) -> Result<bytes::Bytes, crate::checkpoint::CheckpointError> {
        let b = self.optim.into_bytes().map_err(|e| crate::checkpoint::CheckpointError::Format(e.to_string()))?;
        Ok(bytes::Bytes::copy_from_slice(&b))
    }

    /// Continue from a checkpoint: the network (record bytes, ids included) and its optimiser
    /// state.
    pub fn restore(
        &mut self,
        model: &bytes::Bytes,
        optimizer: &bytes::Bytes,
    ) -> Result<(), crate::checkpoint::CheckpointError> {
        let net = crate::checkpoint::load_record(self.net.clone(), model)?;
        self.net = net.train().set_require_grad(true);
        let fresh = std::mem::replace(&mut self.optim, AdamConfig::new().init());
        let bytes = burn::tensor::Bytes::from_bytes_vec(optimizer.to_vec());
        self.optim = fresh.from_bytes(bytes).map_err(|e| crate::checkpoint::CheckpointError::Format(e.to_string()))?;
        Ok(())
    }

    /// The current network without autodiff, for sampling and saving.
    pub fn plain(&self) -> Mlp {
        self.net.valid()
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
}
