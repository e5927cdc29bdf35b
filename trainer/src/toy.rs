//! The 8-gaussians benchmark of spec §10: data, reward, importance-resampled tilted target.

use crate::noise::{self, Stream};
use crate::reward::Reward;
use crate::svgd;
use burn::tensor::{activation::softmax, Device, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;

/// §10.1 unit directions, in this order.
pub fn directions() -> [[f64; 2]; 8] {
    let h = std::f64::consts::FRAC_1_SQRT_2;
    [[0.0, 1.0], [-h, h], [-1.0, 0.0], [-h, -h], [0.0, -1.0], [h, -h], [1.0, 0.0], [h, h]]
}

/// §10.2 cluster centres `c_k = (4/√2) e_k`.
pub fn centres() -> [[f64; 2]; 8] {
    let s = 4.0 * std::f64::consts::FRAC_1_SQRT_2;
    directions().map(|[a, b]| [s * a, s * b])
}

/// `n` points `(4 e_k + 0.5 ε)/√2` (§10.1: noise added *before* dividing by √2), row-major.
pub fn sample_data(seed: u64, key: u64, n: usize) -> Vec<f32> {
    let mut r = noise::rng(seed, Stream::Data, key);
    let dirs = directions();
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let e = dirs[r.random_range(0..8)];
        for &c in &e {
            let eps: f64 = r.sample(StandardNormal);
            out.push(((4.0 * c + 0.5 * eps) * std::f64::consts::FRAC_1_SQRT_2) as f32);
        }
    }
    out
}

/// Softmax temperature of the cluster reward.
pub const ENERGY_TEMP: f64 = 1.0;
/// `log r` clamps r here (§10.2).
pub const LOG_R_CLAMP: f64 = 1e-10;

/// The cluster reward `r(x) = Σ_k softmax_k(−‖x − c_k‖²/T) ρ_k`, `ρ_k = k/7`, on tensors.
/// SVGD sees `R = log max(r, 1e-10)` (§1 table): [`Reward::grad`] is `∇r / r`, 0 where r < 1e-10.
pub struct ClusterReward {
    centres: Tensor<2>, // [8, 2]
    rho: Tensor<2>,     // [8, 1]
    c_sq: Tensor<2>,    // [1, 8]
}

impl ClusterReward {
    pub fn new(device: &Device) -> Self {
        let c: Vec<f32> = centres().iter().flat_map(|p| p.map(|v| v as f32)).collect();
        let centres = svgd::matrix(c, 8, 2, device);
        let rho = svgd::matrix((0..8).map(|k| k as f32 / 7.0).collect(), 8, 1, device);
        let c_sq = svgd::row_sq_norms(&centres);
        Self { centres, rho, c_sq }
    }

    fn weights(&self, x: &Tensor<2>) -> Tensor<2> {
        let d2 = svgd::sq_dists(x, &self.centres, &self.c_sq);
        softmax(d2.mul_scalar(-1.0 / ENERGY_TEMP), 1)
    }

    /// `(r, ∇r)` as `[N,1]` and `[N,2]`.
    pub fn value_and_grad_r(&self, x: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let w = self.weights(x);
        let r = w.clone().matmul(self.rho.clone());
        // γ_k − γ̄ = 2(c_k − c̄)/T, so ∇r = (2/T)[(w∘ρ)·C − r·c̄] with c̄ = w·C.
        let c_bar = w.clone().matmul(self.centres.clone());
        let wr = w * self.rho.clone().transpose();
        let grad = (wr.matmul(self.centres.clone()) - c_bar * r.clone()).mul_scalar(2.0 / ENERGY_TEMP);
        (r, grad)
    }
}

impl Reward for ClusterReward {
    fn value(&self, x: &Tensor<2>) -> Tensor<2> {
        self.weights(x).matmul(self.rho.clone())
    }

    /// `R = log max(r, 1e-10)`.
    fn tilted(&self, x: &Tensor<2>) -> Tensor<2> {
        self.value(x).clamp_min(LOG_R_CLAMP).log()
    }

    fn grad(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        let (r, grad_r) = self.value_and_grad_r(x);
        let live = r.clone().greater_equal_elem(LOG_R_CLAMP);
        let safe_r = r.clamp_min(LOG_R_CLAMP);
        Some((grad_r / safe_r).mask_fill(live.bool_not(), 0.0))
    }
}

/// §10.4: `n` indices into `pool` drawn with replacement with probability ∝ max(r, 0)^β
/// (uniform when the weights sum below 1e-12). Returns the resampled points, row-major.
pub fn tilted_target(pool: &[f32], rewards: &[f32], beta: f64, n: usize, seed: u64) -> Vec<f32> {
    let w: Vec<f64> = rewards.iter().map(|&r| (r.max(0.0) as f64).powf(beta)).collect();
    let total: f64 = w.iter().sum();
    let mut cdf = Vec::with_capacity(w.len());
    let mut acc = 0.0;
    for wi in &w {
        acc += if total < 1e-12 { 1.0 } else { *wi };
        cdf.push(acc);
    }
    let mut r = noise::rng(seed, Stream::Eval, 0x7a26);
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let u = r.random::<f64>() * acc;
        let i = cdf.partition_point(|&c| c <= u).min(w.len() - 1);
        out.extend_from_slice(&pool[2 * i..2 * i + 2]);
    }
    out
}
