//! The FAV math of spec §2–§4: KDE score of the reference, SVGD transport field, fixed-point
//! regression gradient. Read it beside `spec/fav.md`; each function names its section.
//!
//! Everything here works on *detached* features (§3.4) and on a **shard**: the rows owned by
//! this rank against the global columns (§3.5), so the same code serves one process and G ranks.
//! All work is tensor ops (it runs on any burn device) and is tiled over rows so that no N×M
//! kernel matrix is ever held at once: a tile holds at most `tile_elems` kernel entries.

use crate::svgd_host;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// `max(Z, 1e-6)` — the normaliser clamp of §2.3/§2.4.
pub const Z_CLAMP: f64 = 1e-6;

/// Where the KDE normaliser clamp applies (§2.3 vs §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KdeClamp {
    /// Canonical (image / text-to-image): clamp only the summed denominator; far particles fade
    /// to zero prior force.
    Image,
    /// Toy / offline-RL: clamped normaliser in both places; far particles are pulled to the
    /// origin by `−(2/τ)x`. Defined for one temperature only.
    Toy,
}

/// Which kernel entries the repulsion differentiates (§3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Repulsion {
    /// Canonical: columns are the detached gathered set, `(1/N) Σ_t (1/t) Σ_j k (x_i − x_j)`.
    OneSided,
    /// Textbook SVGD (toy, RL): twice the one-sided value.
    TwoSided,
}

impl Repulsion {
    /// 1 for one-sided, 2 for two-sided repulsion (§3.3).
    pub fn factor(self) -> f64 {
        match self {
            Repulsion::OneSided => 1.0,
            Repulsion::TwoSided => 2.0,
        }
    }
}

/// Which implementation evaluates the field. Both compute the same formulas and are checked
/// against the same golden vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// The fused host kernel for low-dimensional particles on a CPU device, tensor ops otherwise.
    #[default]
    Auto,
    /// Tiled tensor ops on the particles' device (any burn backend, CUDA included).
    Tensor,
    /// The fused host kernel ([`crate::svgd_host`]).
    Host,
}

/// The fused host kernel wins while a row's distances are cheap relative to its kernel sums.
const HOST_MAX_D: usize = 8;

impl Engine {
    fn host(self, x: &Tensor<2>) -> bool {
        match self {
            Engine::Auto => {
                x.dims()[1] <= HOST_MAX_D && {
                    let dev = x.device().without_autodiff();
                    dev == Device::flex()
                }
            }
            Engine::Tensor => false,
            Engine::Host => true,
        }
    }
}

/// Everything that shapes the transport field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldConfig {
    pub beta: f64,
    pub temps_kde: Vec<f64>,
    pub temps_stein: Vec<f64>,
    pub kde_clamp: KdeClamp,
    pub repulsion: Repulsion,
    /// Upper bound on kernel entries materialised at once (rows per tile = this / columns).
    pub tile_elems: usize,
    #[serde(default)]
    pub engine: Engine,
}

impl FieldConfig {
    /// Checks the invariants the formulas need; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.beta.is_finite() || self.beta < 0.0 {
            return Err(format!("beta must be finite and ≥ 0, got {}", self.beta));
        }
        for (name, temps) in [("temps_kde", &self.temps_kde), ("temps_stein", &self.temps_stein)] {
            if temps.is_empty() {
                return Err(format!("{name} must list at least one temperature"));
            }
            if let Some(t) = temps.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
                return Err(format!("{name} entries must be finite and > 0, got {t}"));
            }
        }
        if self.kde_clamp == KdeClamp::Toy && self.temps_kde.len() != 1 {
            return Err(format!(
                "kde_clamp = \"toy\" is defined for one KDE temperature only, got {:?}",
                self.temps_kde
            ));
        }
        if self.tile_elems == 0 {
            return Err("tile_elems must be > 0".into());
        }
        Ok(())
    }
}

/// §2 output for a block of rows.
pub struct Score {
    /// `s_i`, the KDE estimate of `∇ log p_ref(x_i)`.
    pub prior: Tensor<2>,
    /// `u_i = s_i + β g_i`.
    pub total: Tensor<2>,
    /// `Z_i = Σ_τ Σ_j k_τ(x_i, y_j)` before clamping.
    pub normalizer: Tensor<2>,
}

/// §3 output for a block of rows.
pub struct Field {
    pub driving: Tensor<2>,
    pub repulsive: Tensor<2>,
    /// `v_i = driving_i + repulsive_i`.
    pub velocity: Tensor<2>,
}

/// Rows per tile so that a tile's kernel block holds at most `tile_elems` entries.
fn tile_rows(n_rows: usize, n_cols: usize, tile_elems: usize) -> usize {
    (tile_elems / n_cols.max(1)).clamp(1, n_rows.max(1))
}

/// Apply `f` to consecutive row tiles of `x` and concatenate each of its outputs.
fn map_row_tiles<const K: usize>(
    x: &Tensor<2>,
    rows_per_tile: usize,
    mut f: impl FnMut(Tensor<2>) -> [Tensor<2>; K],
) -> [Tensor<2>; K] {
    let n = x.dims()[0];
    if n <= rows_per_tile {
        return f(x.clone());
    }
    let mut parts: Vec<Vec<Tensor<2>>> = (0..K).map(|_| Vec::new()).collect();
    let mut start = 0;
    while start < n {
        let end = (start + rows_per_tile).min(n);
        for (k, t) in f(x.clone().slice_dim(0, start..end)).into_iter().enumerate() {
            parts[k].push(t);
        }
        start = end;
    }
    parts
        .into_iter()
        .map(|p| Tensor::cat(p, 0))
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| unreachable!("K outputs per tile"))
}

/// Above this feature dimension, distances use the Gram expansion (GEMM-bound); at or below it,
/// direct differences, which are exact where it matters most (the toy's τ = 0.05, §17.18).
const DIRECT_DIST_MAX_D: usize = 8;

/// Pairwise squared distances `‖a_i − b_j‖²` (rows of `a` × rows of `b`).
/// `b_sq` is the precomputed row norm `‖b_j‖²` as `[1, M]`, used by the Gram form.
pub fn sq_dists(a: &Tensor<2>, b: &Tensor<2>, b_sq: &Tensor<2>) -> Tensor<2> {
    let d = a.dims()[1];
    if d <= DIRECT_DIST_MAX_D {
        let bt = b.clone().transpose();
        let mut acc: Option<Tensor<2>> = None;
        for k in 0..d {
            let diff = a.clone().slice_dim(1, k..k + 1) - bt.clone().slice_dim(0, k..k + 1);
            let sq = diff.clone() * diff;
            acc = Some(match acc {
                Some(a) => a + sq,
                None => sq,
            });
        }
        acc.expect("feature dimension ≥ 1")
    } else {
        let a_sq = (a.clone() * a.clone()).sum_dim(1);
        let ab = a.clone().matmul(b.clone().transpose());
        (a_sq + b_sq.clone() - ab.mul_scalar(2.0)).clamp_min(0.0)
    }
}

/// Row norms `‖b_j‖²` as a `[1, M]` row, for [`sq_dists`].
pub fn row_sq_norms(b: &Tensor<2>) -> Tensor<2> {
    (b.clone() * b.clone()).sum_dim(1).transpose()
}

/// §2.3 / §2.4 — prior score of `x_rows` from the reference set `y_all`, and the total score
/// `u = s + β g` (§0 step 2). `g_rows` is the reward gradient at the same rows.
pub fn total_score(x_rows: &Tensor<2>, y_all: &Tensor<2>, g_rows: &Tensor<2>, cfg: &FieldConfig) -> Score {
    if cfg.engine.host(x_rows) {
        let [n, d] = x_rows.dims();
        let dev = x_rows.device();
        let (p, t, z) = svgd_host::total_score(&to_vec(x_rows), &to_vec(y_all), &to_vec(g_rows), d, cfg);
        return Score { prior: matrix(p, n, d, &dev), total: matrix(t, n, d, &dev), normalizer: matrix(z, n, 1, &dev) };
    }
    let y_sq = row_sq_norms(y_all);
    let rows = tile_rows(x_rows.dims()[0], y_all.dims()[0], cfg.tile_elems);
    let [prior, normalizer] = map_row_tiles(x_rows, rows, |x| {
        let d2 = sq_dists(&x, y_all, &y_sq);
        let mut z_sum: Option<Tensor<2>> = None; // Σ_τ Z_{i,τ}            [T,1]
        let mut num: Option<Tensor<2>> = None; //   Σ_τ (2/τ)(Σ_j k y_j − Z_{i,τ} x_i)  [T,D]
        let mut ky_single: Option<Tensor<2>> = None;
        for &tau in &cfg.temps_kde {
            let k = d2.clone().mul_scalar(-1.0 / tau).exp();
            let z = k.clone().sum_dim(1);
            let ky = k.matmul(y_all.clone());
            let term = (ky.clone() - x.clone() * z.clone()).mul_scalar(2.0 / tau);
            num = Some(match num {
                Some(n) => n + term,
                None => term,
            });
            z_sum = Some(match z_sum {
                Some(s) => s + z,
                None => z,
            });
            ky_single = Some(ky);
        }
        let z_sum = z_sum.expect("validated: ≥ 1 temperature");
        let zc = z_sum.clone().clamp_min(Z_CLAMP);
        let s = match cfg.kde_clamp {
            // §2.3: clamp only the temperature-summed denominator.
            KdeClamp::Image => num.expect("≥ 1 temperature") / zc,
            // §2.4: (2/τ)(Σ_j k y_j / max(Z,1e-6) − x), single temperature.
            KdeClamp::Toy => {
                let tau = cfg.temps_kde[0];
                (ky_single.expect("one temperature") / zc - x).mul_scalar(2.0 / tau)
            }
        };
        [s, z_sum]
    });
    let total = prior.clone() + g_rows.clone().mul_scalar(cfg.beta);
    Score { prior, total, normalizer }
}

/// §3.2–§3.5 — SVGD velocity of `x_rows` against the gathered set `x_all` with total scores
/// `u_all`. `n_global` is the global particle count of the group (the driving normaliser).
pub fn velocity(x_rows: &Tensor<2>, x_all: &Tensor<2>, u_all: &Tensor<2>, n_global: usize, cfg: &FieldConfig) -> Field {
    if cfg.engine.host(x_rows) {
        let [n, d] = x_rows.dims();
        let dev = x_rows.device();
        let (dr, rp) = svgd_host::velocity(&to_vec(x_rows), &to_vec(x_all), &to_vec(u_all), d, n_global, cfg);
        let (driving, repulsive) = (matrix(dr, n, d, &dev), matrix(rp, n, d, &dev));
        let velocity = driving.clone() + repulsive.clone();
        return Field { driving, repulsive, velocity };
    }
    let x_sq = row_sq_norms(x_all);
    let inv_n = 1.0 / n_global as f64;
    let rows = tile_rows(x_rows.dims()[0], x_all.dims()[0], cfg.tile_elems);
    let [driving, repulsive] = map_row_tiles(x_rows, rows, |x| {
        let d2 = sq_dists(&x, x_all, &x_sq);
        let mut ks: Option<Tensor<2>> = None; // K = Σ_t k_t            [T,N]
        let mut rep: Option<Tensor<2>> = None; // Σ_t (1/t) Σ_j k_t,ij (x_i − x_j)  [T,D]
        for &t in &cfg.temps_stein {
            let k = d2.clone().mul_scalar(-1.0 / t).exp();
            // Σ_j k_ij (x_i − x_j) = x_i Σ_j k_ij − Σ_j k_ij x_j
            let r = (x.clone() * k.clone().sum_dim(1) - k.clone().matmul(x_all.clone())).mul_scalar(1.0 / t);
            rep = Some(match rep {
                Some(a) => a + r,
                None => r,
            });
            ks = Some(match ks {
                Some(a) => a + k,
                None => k,
            });
        }
        let driving = ks.expect("≥ 1 temperature").matmul(u_all.clone()).mul_scalar(inv_n);
        let repulsive = rep.expect("≥ 1 temperature").mul_scalar(cfg.repulsion.factor() * inv_n);
        [driving, repulsive]
    });
    let velocity = driving.clone() + repulsive.clone();
    Field { driving, repulsive, velocity }
}

/// §4.1–§4.2 — the fixed-point pseudo-loss value `mean(v²)` over these rows and its exact
/// gradient `∂L/∂x = −2v/(n_rows·D)`, computed directly (never as `x − (x + v)`, which cancels).
/// `n_rows` is the row count the mean runs over (the group size, or a micro-chunk's `m`).
pub fn regression_grad(v_rows: &Tensor<2>, n_rows: usize) -> (f64, Tensor<2>) {
    let d = v_rows.dims()[1];
    let denom = (n_rows * d) as f64;
    let loss = (v_rows.clone() * v_rows.clone()).sum().into_scalar::<f64>() / denom;
    (loss, v_rows.clone().mul_scalar(-2.0 / denom))
}

/// Convenience for one process: total score, velocity and regression gradient for a whole group.
pub struct Step {
    pub score: Score,
    pub field: Field,
    pub loss: f64,
    pub grad: Tensor<2>,
}

/// The full single-group update of §0 (all rows are this process's rows).
pub fn transport(x: &Tensor<2>, y: &Tensor<2>, g: &Tensor<2>, cfg: &FieldConfig) -> Step {
    let n = x.dims()[0];
    let score = total_score(x, y, g, cfg);
    let field = velocity(x, x, &score.total, n, cfg);
    let (loss, grad) = regression_grad(&field.velocity, n);
    Step { score, field, loss, grad }
}

/// Build a `[rows, cols]` tensor from row-major f32 values.
pub fn matrix(values: Vec<f32>, rows: usize, cols: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(burn::tensor::TensorData::new(values, [rows, cols]), device)
}

/// Row-major f32 values of a tensor.
pub fn to_vec(t: &Tensor<2>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensor data")
}
