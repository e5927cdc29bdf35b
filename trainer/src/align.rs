//! FAV fine-tuning of a toy generator (spec §5, §10.3): generate, score against the frozen
//! reference pool, move particles with the SVGD field, regress onto them, step.

use crate::config::Config;
use crate::generators::{Mlp, Sampler};
use crate::noise::{self, Stream};
use crate::reward::Reward;
use crate::svgd::{self, FieldConfig};
use crate::toy::ClusterReward;
use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand::Rng;

/// Samples of the frozen base generator, drawn once before alignment (§8, toy).
pub struct RefPool {
    rows: Vec<f32>,
    n: usize,
}

const POOL_CHUNK: usize = 10_000;

impl RefPool {
    pub fn draw(seed: u64, size: usize, sampler: &Sampler, base: &Mlp, device: &Device) -> Self {
        let mut rows = Vec::with_capacity(2 * size);
        let mut start = 0;
        while start < size {
            let end = (start + POOL_CHUNK).min(size);
            let z = noise::normal_rows(seed, Stream::RefPool, start as u64..end as u64, sampler.noise_dim());
            let z = svgd::matrix(z, end - start, sampler.noise_dim(), device);
            rows.extend(svgd::to_vec(&sampler.generate(base, z)));
            start = end;
        }
        Self { rows, n: size }
    }

    /// The step's reference minibatch: `m` pool indices drawn uniformly with replacement.
    pub fn minibatch(&self, seed: u64, step: usize, m: usize, device: &Device) -> Tensor<2> {
        let mut r = noise::rng(seed, Stream::RefPool, (1 << 48) | step as u64);
        let rows: Vec<f32> = (0..m)
            .flat_map(|_| {
                let i = r.random_range(0..self.n);
                [self.rows[2 * i], self.rows[2 * i + 1]]
            })
            .collect();
        svgd::matrix(rows, m, 2, device)
    }
}

/// §6.3 seed layout for one condition: `K` reference seeds first, then `K` generator seeds.
pub fn gen_seeds(step: usize, k: usize) -> std::ops::Range<u64> {
    let base = (step * k * 2) as u64;
    base + k as u64..base + 2 * k as u64
}

/// One alignment state: the trainable network, its optimiser and the fixed pieces.
pub struct Aligner {
    pub net: Mlp,
    optim: burn::optim::ModuleOptimizer,
    sampler: Sampler,
    field: FieldConfig,
    reward: ClusterReward,
    pool: RefPool,
    seed: u64,
    batch: usize,
    ref_batch: usize,
    lr: f64,
    device: Device,
}

/// What one step reports.
pub struct StepStats {
    pub loss: f64,
}

impl Aligner {
    pub fn new(cfg: &Config, sampler: Sampler, base: &Mlp, device: &Device) -> Self {
        let pool = RefPool::draw(cfg.seed, cfg.fav.ref_pool, &sampler, base, device);
        let mut adam = AdamConfig::new().with_epsilon(1e-8);
        if cfg.fav.max_grad_norm > 0.0 {
            adam = adam.with_grad_clipping(Some(GradientClippingConfig::Norm(cfg.fav.max_grad_norm as f32)));
        }
        Self {
            net: base.clone().to_device(&device.clone().autodiff()).train().set_require_grad(true),
            optim: adam.init(),
            sampler,
            field: cfg.field(),
            reward: ClusterReward::new(device),
            pool,
            seed: cfg.seed,
            batch: cfg.fav.batch,
            ref_batch: cfg.fav.ref_batch,
            lr: cfg.fav.lr,
            device: device.clone(),
        }
    }

    /// One FAV step (§5, with steps 2–5 in one pass as the toy does).
    pub fn step(&mut self, step: usize) -> StepStats {
        let ad = self.device.clone().autodiff();
        let z = noise::normal_rows(self.seed, Stream::Particle, gen_seeds(step, self.batch), self.sampler.noise_dim());
        let z = svgd::matrix(z, self.batch, self.sampler.noise_dim(), &ad);
        let x = self.sampler.generate(&self.net, z);
        // §3.4: the field is computed on detached particles, off the autodiff graph.
        let xd = x.clone().detach().without_autodiff();
        let y = self.pool.minibatch(self.seed, step, self.ref_batch, &self.device);
        let g = self.reward.grad(&xd);
        let out = svgd::transport(&xd, &y, &g, &self.field);
        // ∂L/∂x = −2v/(N·D) exactly (§4.2): backpropagate Σ x ⊙ stopgrad(grad).
        let surrogate = (x * out.grad.autodiff()).sum();
        let grads = GradientsParams::from_grads(surrogate.backward(), &self.net);
        self.net = self.optim.step(self.lr, self.net.clone(), grads);
        StepStats { loss: out.loss }
    }

    /// The current network without autodiff, for sampling and saving.
    pub fn plain(&self) -> Mlp {
        self.net.valid()
    }
}
