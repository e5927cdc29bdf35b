//! Toy evaluation against the tilted target (spec §10.4–§10.5): fixed evaluation noise, so the
//! base and the aligned generator are compared on the same seeds.

use crate::data::{gaussians, Condition};
use crate::metrics;
use crate::models::Generator;
use crate::noise::{self, Stream};
use crate::rewards::toy::ClusterReward;
use crate::rewards::Reward;
use crate::tensors::{matrix, read, scalar, DeviceError};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// Size of the evaluation data pool (the first 10 000 of a fresh 200 000 draw, §10.1).
pub const POOL: usize = 10_000;
/// Base samples from which FAV's own target `p_base · r^β` is resampled.
const BASE_POOL: usize = 50_000;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
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
    reward: ClusterReward,
    steps: usize,
    device: Device,
}

impl Evaluator {
    /// `n` samples per evaluation of generators with `noise_dim` noise values, sampled in
    /// `steps` steps. `Err` (here and below): the device failed.
    pub fn new(
        seed: u64,
        n: usize,
        beta: f64,
        noise_dim: usize,
        steps: usize,
        device: &Device,
    ) -> Result<Self, DeviceError> {
        let pool = gaussians::sample_data(seed, 1, POOL);
        let reward = ClusterReward::new(device);
        let r = read(&reward.value(&matrix(pool.clone(), POOL, 2, device), Condition::None)?)?;
        let target = gaussians::tilted_target(&pool, &r, beta, n, seed);
        let data = pool[..2 * n.min(POOL)].to_vec();
        let z = noise::normal_rows(seed, Stream::Eval, 0..n as u64, noise_dim);
        Ok(Self { seed, beta, n, z, noise_dim, target, data, reward, steps, device: device.clone() })
    }

    /// FAV's own target `p_base · r^β`: FAV anchors to the base, not to the data (§10.4), so this
    /// is the distribution exact SVGD from this base converges to. Its scores against
    /// [`Self::target`] show what the base allows (a base with uneven cluster masses caps the
    /// reward); the amortised generator lands near them, not exactly on them (BENCHMARKS.md).
    pub fn base_target<G: Generator>(&self, base: &G) -> Result<Vec<f32>, DeviceError> {
        let keys = (1u64 << 41)..(1u64 << 41) + BASE_POOL as u64;
        let z = matrix(
            noise::normal_rows(self.seed, Stream::Eval, keys, self.noise_dim),
            BASE_POOL,
            self.noise_dim,
            &self.device,
        );
        let x = base.sample(z, Condition::None, self.steps, None);
        let r = read(&self.reward.value(&x, Condition::None)?)?;
        Ok(gaussians::tilted_target(&read(&x)?, &r, self.beta, self.n, self.seed))
    }

    /// Samples of `net` on the fixed evaluation noise, row-major.
    pub fn samples<G: Generator>(&self, net: &G) -> Result<Vec<f32>, DeviceError> {
        let z = matrix(self.z.clone(), self.n, self.noise_dim, &self.device);
        read(&net.sample(z, Condition::None, self.steps, None))
    }

    pub fn score(&self, x: &[f32], against: &[f32]) -> Result<Scores, DeviceError> {
        let r = self.reward.value(&matrix(x.to_vec(), x.len() / 2, 2, &self.device), Condition::None)?;
        Ok(Scores {
            kl: metrics::kde_kl(against, x),
            mmd2: metrics::mmd2(x, against, self.seed),
            reward_mean: scalar(&r.mean())?,
        })
    }
}
