//! Toy evaluation against the tilted target (spec §10.4–§10.5): fixed evaluation noise, so the
//! base and the aligned generator are compared on the same seeds.

use crate::generators::{Mlp, Sampler};
use crate::noise::{self, Stream};
use crate::reward::Reward;
use crate::{metrics, svgd, toy};
use burn::tensor::Device;
use serde::Serialize;

/// Size of the evaluation data pool (the first 10 000 of a fresh 200 000 draw, §10.1).
pub const POOL: usize = 10_000;
/// Base samples from which FAV's own target `p_base · r^β` is resampled.
const BASE_POOL: usize = 50_000;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Scores {
    pub kl: f64,
    pub mmd2: f64,
    pub reward_mean: f64,
}

pub struct Evaluator {
    seed: u64,
    beta: f64,
    n: usize,
    z: Vec<f32>,
    noise_dim: usize,
    /// Importance-resampled target `p_data · r^β`.
    pub target: Vec<f32>,
    /// Plain data (for judging the base generator's fit).
    pub data: Vec<f32>,
    reward: toy::ClusterReward,
    device: Device,
}

impl Evaluator {
    pub fn new(seed: u64, n: usize, beta: f64, sampler: &Sampler, device: &Device) -> Self {
        let pool = toy::sample_data(seed, 1, POOL);
        let reward = toy::ClusterReward::new(device);
        let r = svgd::to_vec(&reward.value(&svgd::matrix(pool.clone(), POOL, 2, device)));
        let target = toy::tilted_target(&pool, &r, beta, n, seed);
        let data = pool[..2 * n.min(POOL)].to_vec();
        let z = noise::normal_rows(seed, Stream::Eval, 0..n as u64, sampler.noise_dim());
        Self { seed, beta, n, z, noise_dim: sampler.noise_dim(), target, data, reward, device: device.clone() }
    }

    /// FAV's own target `p_base · r^β`: FAV anchors to the base, not to the data (§10.4), so this
    /// is the distribution exact SVGD from this base converges to. Its scores against
    /// [`Self::target`] show what the base allows (a base with uneven cluster masses caps the
    /// reward); the amortised generator lands near them, not exactly on them (BENCHMARKS.md).
    pub fn base_target(&self, sampler: &Sampler, base: &Mlp) -> Vec<f32> {
        let keys = (1u64 << 41)..(1u64 << 41) + BASE_POOL as u64;
        let z = svgd::matrix(
            noise::normal_rows(self.seed, Stream::Eval, keys, self.noise_dim),
            BASE_POOL,
            self.noise_dim,
            &self.device,
        );
        let x = sampler.generate(base, z);
        let r = svgd::to_vec(&self.reward.value(&x));
        toy::tilted_target(&svgd::to_vec(&x), &r, self.beta, self.n, self.seed)
    }

    /// Samples of `net` on the fixed evaluation noise, row-major.
    pub fn samples(&self, sampler: &Sampler, net: &Mlp) -> Vec<f32> {
        let z = svgd::matrix(self.z.clone(), self.n, self.noise_dim, &self.device);
        svgd::to_vec(&sampler.generate(net, z))
    }

    pub fn score(&self, x: &[f32], against: &[f32]) -> Scores {
        let r = self.reward.value(&svgd::matrix(x.to_vec(), x.len() / 2, 2, &self.device));
        Scores {
            kl: metrics::kde_kl(against, x),
            mmd2: metrics::mmd2(x, against, self.seed),
            reward_mean: r.mean().into_scalar::<f64>(),
        }
    }
}
