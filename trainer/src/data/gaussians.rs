//! The 8-gaussians benchmark of spec §10: data and the importance-resampled tilted target.

use crate::noise::{self, Stream};
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
