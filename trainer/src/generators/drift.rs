//! The drifting objective that pretrains the one-step drift generator (spec §10.6): regress the
//! generator onto `stopgrad(x + V)` with a doubly normalised, non-squared-distance kernel field.

use crate::svgd::{row_sq_norms, sq_dists};
use burn::tensor::Tensor;

pub const NOISE_DIM: usize = 32;
/// `temp_d` of the config (a docstring says 0.05; the config wins, §16.13).
pub const TEMP: f64 = 0.15;

/// The drift field `V` for generated points `x` (detached, `[N, D]`) toward data `y` (`[P, D]`).
pub fn field(x: &Tensor<2>, y: &Tensor<2>, temp: f64) -> Tensor<2> {
    let n = x.dims()[0];
    let dist = |a: &Tensor<2>, b: &Tensor<2>| sq_dists(a, b, &row_sq_norms(b)).sqrt();
    // Self-pairs (gen i vs gen i) are masked out.
    let eye = Tensor::<2>::eye(n, &x.device());
    let k_gen = dist(x, x).mul_scalar(-1.0 / temp).exp() * eye.neg().add_scalar(1.0);
    let k_dat = dist(x, y).mul_scalar(-1.0 / temp).exp();
    // K = k / √(rowsum · colsum), rows over all targets, columns summed over the gen rows.
    let row = k_gen.clone().sum_dim(1) + k_dat.clone().sum_dim(1);
    let kg = k_gen.clone() / (row.clone() * k_gen.sum_dim(0)).sqrt();
    let kd = k_dat.clone() / (row * k_dat.sum_dim(0)).sqrt();
    // V_i = Σ_p K_ip (Σ_g K_ig) y_p − Σ_g K_ig (Σ_p K_ip) x_g
    let (sg, sd) = (kg.clone().sum_dim(1), kd.clone().sum_dim(1));
    kd.matmul(y.clone()) * sg - kg.matmul(x.clone()) * sd
}
