//! The FAV math of spec §2–§4: KDE score of the reference, SVGD transport field, fixed-point
//! regression gradient. Read it beside `spec/fav.md`; each function names its section.
//!
//! Everything here works on *detached* features (§3.4) and on a **shard**: the rows owned by
//! this rank against the global columns (§3.5), so the same code serves one process and G ranks.
//! Two engines compute it ([`Engine`]): tensor ops (any burn device), tiled over rows so that no
//! N×M kernel matrix is ever held at once (a tile holds at most `tile_elems` kernel entries), and
//! a fused host kernel ([`host`]).
//!
//! Precision in float32. Every kernel-weighted difference `Σ_j k_ij (a_j − x_i)` is formed so that
//! nothing cancels: at D ≤ 8 from the direct differences themselves; above, by GEMM on
//! coordinates centred on the columns' mean (shift invariance makes that exact in real
//! arithmetic, and it keeps far-from-origin coordinates from cancelling), with the self pair
//! `j = i` of the repulsion left out — it contributes exactly zero, but `x_i·Σ_j k − Σ_j k x_j`
//! would leave its rounding behind, which dominates a row whose other kernel weights are tiny.

mod config;
pub mod host;

pub use config::{Engine, FieldConfig, KdeClamp, Repulsion, Z_CLAMP};

use crate::tensors::{matrix, read, DeviceError};
use burn::tensor::{Device, Tensor};

/// On the CPU the fused host kernel wins while a row's distances are cheap relative to its
/// kernel sums.
const HOST_MAX_D: usize = 8;

impl Engine {
    /// Auto: the host kernel on a CPU device at D ≤ 8, the tensor path above; on a GPU always the
    /// host kernel. There burn-cuda runs float32 products on tensor cores in TF32 whenever its
    /// autotune times such a kernel fastest (cubek-matmul `adjust_dtypes`: 2⁻¹¹ relative rounding,
    /// past the spec's float32 1e-4, and the Gram distances cancel), and which kernel it picks is
    /// a timing. The host kernel is exact float32 and the same bits on every device; a group's
    /// field is small (K particles per condition), so its copy to the host costs little.
    fn host(self, x: &Tensor<2>) -> bool {
        match self {
            Engine::Auto => {
                let dev = x.device().without_autodiff();
                dev != Device::flex() || x.dims()[1] <= HOST_MAX_D
            }
            Engine::Tensor => false,
            Engine::Host => true,
        }
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

/// Apply `f` to consecutive row tiles of `x` (with each tile's first row) and concatenate each of
/// its outputs.
fn map_row_tiles<const K: usize>(
    x: &Tensor<2>,
    rows_per_tile: usize,
    mut f: impl FnMut(usize, Tensor<2>) -> [Tensor<2>; K],
) -> [Tensor<2>; K] {
    let n = x.dims()[0];
    if n <= rows_per_tile {
        return f(0, x.clone());
    }
    let mut parts: Vec<Vec<Tensor<2>>> = (0..K).map(|_| Vec::new()).collect();
    let mut start = 0;
    while start < n {
        let end = (start + rows_per_tile).min(n);
        for (k, t) in f(start, x.clone().slice_dim(0, start..end)).into_iter().enumerate() {
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

/// `a_i − b_j` for each coordinate: `D` blocks `[rows of a, rows of b]`.
fn coordinate_diffs(a: &Tensor<2>, b: &Tensor<2>) -> Vec<Tensor<2>> {
    let bt = b.clone().transpose();
    (0..a.dims()[1]).map(|k| a.clone().slice_dim(1, k..k + 1) - bt.clone().slice_dim(0, k..k + 1)).collect()
}

/// `Σ_k diffs_k²`.
fn sum_sq(diffs: &[Tensor<2>]) -> Tensor<2> {
    let mut it = diffs.iter().map(|d| d.clone() * d.clone());
    let first = it.next().expect("feature dimension ≥ 1");
    it.fold(first, |acc, sq| acc + sq)
}

/// Pairwise squared distances `‖a_i − b_j‖²` (rows of `a` × rows of `b`).
/// `b_sq` is the precomputed row norm `‖b_j‖²` as `[1, M]`, used by the Gram form.
pub fn sq_dists(a: &Tensor<2>, b: &Tensor<2>, b_sq: &Tensor<2>) -> Tensor<2> {
    if a.dims()[1] <= DIRECT_DIST_MAX_D {
        sum_sq(&coordinate_diffs(a, b))
    } else {
        gram_sq_dists(a, b, b_sq)
    }
}

/// `‖a‖² + ‖b‖² − 2 a·b`, clamped at 0 (GEMM-bound; rounding ~ε·(‖a‖² + ‖b‖²)).
fn gram_sq_dists(a: &Tensor<2>, b: &Tensor<2>, b_sq: &Tensor<2>) -> Tensor<2> {
    let a_sq = (a.clone() * a.clone()).sum_dim(1);
    let ab = a.clone().matmul(b.clone().transpose());
    (a_sq + b_sq.clone() - ab.mul_scalar(2.0)).clamp_min(0.0)
}

/// Row norms `‖b_j‖²` as a `[1, M]` row, for [`sq_dists`].
pub fn row_sq_norms(b: &Tensor<2>) -> Tensor<2> {
    (b.clone() * b.clone()).sum_dim(1).transpose()
}

/// `x_rows` and `cols` shifted by the mean of `cols`: every quantity here depends on differences
/// only, and centred coordinates keep the Gram form and `Σ k a − x Σ k` from cancelling when the
/// particles sit far from the origin.
fn centred(x_rows: &Tensor<2>, cols: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let c = cols.clone().mean_dim(0);
    (x_rows.clone() - c.clone(), cols.clone() - c)
}

/// One row tile's view of its columns: `Σ_j k_ij (a_j − x_i)` for a kernel block `k`, and the
/// squared distances the kernels are made of. At D ≤ 8 from the coordinate differences
/// themselves; above, by GEMM on centred coordinates.
enum Pairs {
    /// `x_i − a_j` per coordinate.
    Direct(Vec<Tensor<2>>),
    /// Centred rows and columns (boxed: a tensor handle is large next to a `Vec`).
    Gram(Box<(Tensor<2>, Tensor<2>)>),
}

impl Pairs {
    fn new(x: Tensor<2>, cols: &Tensor<2>, cols_sq: Option<&Tensor<2>>) -> (Self, Tensor<2>) {
        match cols_sq {
            None => {
                let diffs = coordinate_diffs(&x, cols);
                let d2 = sum_sq(&diffs);
                (Pairs::Direct(diffs), d2)
            }
            Some(sq) => {
                let d2 = gram_sq_dists(&x, cols, sq);
                (Pairs::Gram(Box::new((x, cols.clone()))), d2)
            }
        }
    }

    /// `Σ_j k_ij (a_j − x_i)` and `Σ_j k_ij`.
    fn toward(&self, k: &Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let z = k.clone().sum_dim(1);
        let v = match self {
            Pairs::Direct(diffs) => {
                let cols: Vec<Tensor<2>> = diffs.iter().map(|d| (k.clone() * d.clone()).sum_dim(1).neg()).collect();
                Tensor::cat(cols, 1)
            }
            Pairs::Gram(xa) => k.clone().matmul(xa.1.clone()) - xa.0.clone() * z.clone(),
        };
        (v, z)
    }
}

/// How one side of the field sees its columns: directly (D ≤ 8), or centred with their row norms.
fn prepare(x_rows: &Tensor<2>, cols: &Tensor<2>) -> (Tensor<2>, Tensor<2>, Option<Tensor<2>>) {
    if x_rows.dims()[1] <= DIRECT_DIST_MAX_D {
        (x_rows.clone(), cols.clone(), None)
    } else {
        let (x, a) = centred(x_rows, cols);
        let sq = row_sq_norms(&a);
        (x, a, Some(sq))
    }
}

/// §2.3 / §2.4 — prior score of `x_rows` from the reference set `y_all`, and the total score
/// `u = s + β g` (§0 step 2). `g_rows` is the reward gradient at the same rows. `Err`: the host
/// kernel could not read its inputs back (the device failed making them).
pub fn total_score(
    x_rows: &Tensor<2>,
    y_all: &Tensor<2>,
    g_rows: &Tensor<2>,
    cfg: &FieldConfig,
) -> Result<Score, DeviceError> {
    if cfg.engine.host(x_rows) {
        let [n, d] = x_rows.dims();
        let dev = x_rows.device();
        let (p, t, z) = host::total_score(&read(x_rows)?, &read(y_all)?, &read(g_rows)?, d, cfg);
        return Ok(Score {
            prior: matrix(p, n, d, &dev),
            total: matrix(t, n, d, &dev),
            normalizer: matrix(z, n, 1, &dev),
        });
    }
    let (xs, ys, y_sq) = prepare(x_rows, y_all);
    let rows = tile_rows(x_rows.dims()[0], y_all.dims()[0], cfg.tile_elems);
    let [prior, normalizer] = map_row_tiles(&xs, rows, |start, x| {
        let (pairs, d2) = Pairs::new(x.clone(), &ys, y_sq.as_ref());
        let mut z_sum: Option<Tensor<2>> = None; // Σ_τ Z_{i,τ}                  [T,1]
        let mut num: Option<Tensor<2>> = None; //   Σ_τ (2/τ) Σ_j k (y_j − x_i)    [T,D]
        for &tau in &cfg.temps_kde {
            let (toward, z) = pairs.toward(&d2.clone().mul_scalar(-1.0 / tau).exp());
            let term = toward.mul_scalar(2.0 / tau);
            num = Some(match num {
                Some(n) => n + term,
                None => term,
            });
            z_sum = Some(match z_sum {
                Some(s) => s + z,
                None => z,
            });
        }
        let (num, z_sum) = (num.expect("validated: ≥ 1 temperature"), z_sum.expect("≥ 1 temperature"));
        let zc = z_sum.clone().clamp_min(Z_CLAMP);
        let s = match cfg.kde_clamp {
            // §2.3: clamp only the temperature-summed denominator.
            KdeClamp::Image => num / zc,
            // §2.4, single temperature: (2/τ)(Σ k (y − x)/Zc − x(1 − Z/Zc)), the second term
            // exactly 0 unless clamped (x uncentred: the toy clamp pulls toward the origin).
            KdeClamp::Toy => {
                let x_orig = x_rows.clone().slice_dim(0, start..start + x.dims()[0]);
                let pull = (z_sum.clone() / zc.clone()).neg().add_scalar(1.0);
                num / zc - (x_orig * pull).mul_scalar(2.0 / cfg.temps_kde[0])
            }
        };
        [s, z_sum]
    });
    let total = prior.clone() + g_rows.clone().mul_scalar(cfg.beta);
    Ok(Score { prior, total, normalizer })
}

/// `[rows, cols]` with 1 everywhere but at the self pairs `(r, first + r)`.
fn off_self(rows: usize, cols: usize, first: usize, device: &Device) -> Tensor<2> {
    let mut parts = Vec::with_capacity(3);
    if first > 0 {
        parts.push(Tensor::zeros([rows, first], device));
    }
    parts.push(Tensor::<2>::eye(rows, device));
    if first + rows < cols {
        parts.push(Tensor::zeros([rows, cols - first - rows], device));
    }
    Tensor::cat(parts, 1).neg().add_scalar(1.0)
}

/// §3.2–§3.5 — SVGD velocity of `x_rows` against the gathered set `x_all` with total scores
/// `u_all`. `x_rows` are rows `first_row..` of `x_all` (their self pairs are known);
/// `n_global` is the global particle count of the group (the driving normaliser). `Err` as
/// [`total_score`]'s.
pub fn velocity(
    x_rows: &Tensor<2>,
    x_all: &Tensor<2>,
    u_all: &Tensor<2>,
    n_global: usize,
    first_row: usize,
    cfg: &FieldConfig,
) -> Result<Field, DeviceError> {
    let [n, d] = x_rows.dims();
    assert!(first_row + n <= x_all.dims()[0], "rows {first_row}..{} are not rows of the gathered set", first_row + n);
    if cfg.engine.host(x_rows) {
        let dev = x_rows.device();
        let (dr, rp) = host::velocity(&read(x_rows)?, &read(x_all)?, &read(u_all)?, d, n_global, cfg);
        let (driving, repulsive) = (matrix(dr, n, d, &dev), matrix(rp, n, d, &dev));
        let velocity = driving.clone() + repulsive.clone();
        return Ok(Field { driving, repulsive, velocity });
    }
    let (xs, cols, x_sq) = prepare(x_rows, x_all);
    let inv_n = 1.0 / n_global as f64;
    let rows = tile_rows(n, x_all.dims()[0], cfg.tile_elems);
    let [driving, repulsive] = map_row_tiles(&xs, rows, |start, x| {
        let (pairs, d2) = Pairs::new(x.clone(), &cols, x_sq.as_ref());
        // The Gram form leaves rounding on the self pair: its distance is 0 and its repulsion
        // nothing. (The direct form gets both exactly.)
        let (d2, others) = match &pairs {
            Pairs::Direct(_) => (d2, None),
            Pairs::Gram(..) => {
                let mask = off_self(x.dims()[0], cols.dims()[0], first_row + start, &x.device());
                (d2 * mask.clone(), Some(mask))
            }
        };
        let mut ks: Option<Tensor<2>> = None; // K = Σ_t k_t                    [T,N]
        let mut rep: Option<Tensor<2>> = None; // Σ_t (1/t) Σ_j k_t,ij (x_i − x_j) [T,D]
        for &t in &cfg.temps_stein {
            let k = d2.clone().mul_scalar(-1.0 / t).exp();
            let k_rep = match &others {
                Some(m) => k.clone() * m.clone(),
                None => k.clone(),
            };
            let r = pairs.toward(&k_rep).0.mul_scalar(-1.0 / t);
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
    Ok(Field { driving, repulsive, velocity })
}

/// §4.1–§4.2 — the fixed-point pseudo-loss value `mean(v²)` over these rows and its exact
/// gradient `∂L/∂x = −2v/(n_rows·D)`, computed directly (never as `x − (x + v)`, which cancels).
/// `n_rows` is the row count the mean runs over (the group size, or a micro-chunk's `m`).
pub fn regression_grad(v_rows: &Tensor<2>, n_rows: usize) -> Result<(f64, Tensor<2>), DeviceError> {
    let d = v_rows.dims()[1];
    let denom = (n_rows * d) as f64;
    let loss = crate::tensors::scalar(&(v_rows.clone() * v_rows.clone()).sum())? / denom;
    Ok((loss, v_rows.clone().mul_scalar(-2.0 / denom)))
}

/// Convenience for one process: total score, velocity and regression gradient for a whole group.
pub struct Step {
    pub score: Score,
    pub field: Field,
    pub loss: f64,
    pub grad: Tensor<2>,
}

/// The full single-group update of §0 (all rows are this process's rows).
pub fn transport(x: &Tensor<2>, y: &Tensor<2>, g: &Tensor<2>, cfg: &FieldConfig) -> Result<Step, DeviceError> {
    let n = x.dims()[0];
    let score = total_score(x, y, g, cfg)?;
    let field = velocity(x, x, &score.total, n, 0, cfg)?;
    let (loss, grad) = regression_grad(&field.velocity, n)?;
    Ok(Step { score, field, loss, grad })
}
