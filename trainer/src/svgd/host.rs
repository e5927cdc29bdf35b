//! A fused host kernel for the same formulas as [`super`], for low-dimensional particles on a
//! CPU device (the toy's D = 2). There the tensor path is memory-bound: a dozen element-wise
//! passes over each N×M kernel block. Here each row makes one pass over the columns with every
//! kernel sum accumulated at once, rows in parallel; memory is O(M) per thread, no N×M block.
//! Every kernel-weighted difference is summed as `Σ_j k_j (a_j − x)` from the differences
//! themselves, so nothing cancels (a row's self pair adds exactly 0). The golden test checks
//! this path and the tensor path against the same vectors.

use super::config::{FieldConfig, KdeClamp, Z_CLAMP};
use rayon::prelude::*;

/// `exp(x)` for `x ≤ 0` in f32 with ~2e-7 relative error, written branch-free so the column
/// loops vectorise (libm's `expf` does not). Inputs below −87 give ~1e-38 instead of 0.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| ≤ ln2/2: Taylor to r⁶ (truncation < 2e-8 relative there).
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

/// Column-major copy (`d` rows of `n` values) so each coordinate is contiguous.
fn transpose(a: &[f32], d: usize) -> Vec<f32> {
    let n = a.len() / d;
    let mut t = vec![0.0; a.len()];
    for i in 0..n {
        for k in 0..d {
            t[k * n + i] = a[i * d + k];
        }
    }
    t
}

/// `out[j] = ‖x − col_j‖²` for the columns of `cols_t` (column-major, `d × m`).
#[inline(always)]
fn row_dists(x: &[f32], cols_t: &[f32], out: &mut [f32]) {
    let m = out.len();
    out.fill(0.0);
    for (k, &xk) in x.iter().enumerate() {
        let col = &cols_t[k * m..(k + 1) * m];
        for (o, &c) in out.iter_mut().zip(col) {
            let diff = xk - c;
            *o += diff * diff;
        }
    }
}

/// `Σ_j term(a_j, b_j)`, accumulated in 8 f32 lanes per 512-element chunk and in f64 across
/// chunks (vectorisable, stable; the order of operations is fixed, so every build gives the same
/// bits).
#[inline(always)]
fn lanes(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0.0f32; 8];
    let mut total = 0.0f64;
    for (ca, cb) in a.chunks(512).zip(b.chunks(512)) {
        let mut it_a = ca.chunks_exact(8);
        let mut it_b = cb.chunks_exact(8);
        for (x, y) in (&mut it_a).zip(&mut it_b) {
            for l in 0..8 {
                acc[l] += term(x[l], y[l]);
            }
        }
        for (x, y) in it_a.remainder().iter().zip(it_b.remainder()) {
            acc[0] += term(*x, *y);
        }
        total += acc.iter().map(|&v| v as f64).sum::<f64>();
        acc = [0.0; 8];
    }
    total
}

/// `Σ_j a_j b_j`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f64 {
    lanes(a, b, |x, y| x * y)
}

#[inline(always)]
fn sum(a: &[f32]) -> f64 {
    let ones = [1.0f32; 512];
    a.chunks(512).map(|c| dot(c, &ones[..c.len()])).sum()
}

/// `Σ_j k_j (col_j − x)`: the kernel-weighted difference from the differences themselves.
#[inline(always)]
fn weighted_diff(k: &[f32], col: &[f32], x: f32) -> f64 {
    lanes(k, col, |kj, cj| kj * (cj - x))
}

/// Rows per rayon task: enough work per task to amortise scheduling.
const ROWS_PER_TASK: usize = 16;

/// Compile `$task` (an `#[inline(always)]` function) a second time with AVX2 enabled and pick
/// the widest version the CPU has at run time. The source fixes every operation's order, so
/// both versions give the same bits; only the vector width differs.
macro_rules! dispatch {
    ($name:ident, $avx2:ident, $task:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2($($arg: $ty),*) {
            $task($($arg),*)
        }

        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
            $task($($arg),*)
        }
    };
}

/// KDE rows `first..first + z_rows.len()` of §2.3 / §2.4 into `p_rows` and `z_rows`.
#[inline(always)]
fn kde_task(x: &[f32], yt: &[f32], d: usize, cfg: &FieldConfig, first: usize, p_rows: &mut [f32], z_rows: &mut [f32]) {
    let m = yt.len() / d;
    let mut d2 = vec![0.0f32; m];
    let mut k = vec![0.0f32; m];
    let mut num = vec![0.0f64; d];
    let mut toward = vec![0.0f64; d];
    for (r, (p, z_slot)) in p_rows.chunks_mut(d).zip(z_rows.iter_mut()).enumerate() {
        let i = first + r;
        let xi = &x[i * d..(i + 1) * d];
        row_dists(xi, yt, &mut d2);
        num.fill(0.0);
        let mut z_sum = 0.0f64;
        for &tau in &cfg.temps_kde {
            let s = (-1.0 / tau) as f32;
            for (kj, &dj) in k.iter_mut().zip(&d2) {
                *kj = exp_neg(dj * s);
            }
            z_sum += sum(&k);
            for c in 0..d {
                toward[c] = weighted_diff(&k, &yt[c * m..(c + 1) * m], xi[c]);
                num[c] += (2.0 / tau) * toward[c];
            }
        }
        for c in 0..d {
            p[c] = match cfg.kde_clamp {
                KdeClamp::Image => num[c] / z_sum.max(Z_CLAMP),
                KdeClamp::Toy => FieldConfig::toy_prior(cfg.temps_kde[0], toward[c], z_sum, xi[c] as f64),
            } as f32;
        }
        *z_slot = z_sum as f32;
    }
}

dispatch!(kde_rows, kde_rows_avx2, kde_task,
    (x: &[f32], yt: &[f32], d: usize, cfg: &FieldConfig, first: usize, p_rows: &mut [f32], z_rows: &mut [f32]));

/// §2.3 / §2.4 on host slices (row-major `n × d`): returns `(prior, total, normalizer)`.
pub fn total_score(x: &[f32], y: &[f32], g: &[f32], d: usize, cfg: &FieldConfig) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = x.len() / d;
    let yt = transpose(y, d);
    let mut prior = vec![0.0f32; n * d];
    let mut z_out = vec![0.0f32; n];
    prior
        .par_chunks_mut(ROWS_PER_TASK * d)
        .zip(z_out.par_chunks_mut(ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (p_rows, z_rows))| kde_rows(x, &yt, d, cfg, task * ROWS_PER_TASK, p_rows, z_rows));
    let total = prior.iter().zip(g).map(|(s, gi)| s + cfg.beta as f32 * gi).collect();
    (prior, total, z_out)
}

/// The read-only inputs of the Stein rows: own rows, gathered columns (column-major) and their
/// total scores (column-major).
struct SteinInputs<'a> {
    x_rows: &'a [f32],
    xt: &'a [f32],
    ut: &'a [f32],
    d: usize,
    n_global: usize,
    cfg: &'a FieldConfig,
}

/// Stein rows `first..` of §3.2–§3.3 into `dr_rows` (driving) and `rp_rows` (repulsion).
#[inline(always)]
fn stein_task(inp: &SteinInputs, first: usize, dr_rows: &mut [f32], rp_rows: &mut [f32]) {
    let SteinInputs { x_rows, xt, ut, d, n_global, cfg } = *inp;
    let n = xt.len() / d;
    let inv_n = 1.0 / n_global as f64;
    let rep_scale = cfg.repulsion.factor() * inv_n;
    let mut d2 = vec![0.0f32; n];
    let mut k = vec![0.0f32; n];
    let mut ks = vec![0.0f32; n];
    let mut rep = vec![0.0f64; d];
    for (r, (dr, rp)) in dr_rows.chunks_mut(d).zip(rp_rows.chunks_mut(d)).enumerate() {
        let i = first + r;
        let xi = &x_rows[i * d..(i + 1) * d];
        row_dists(xi, xt, &mut d2);
        rep.fill(0.0);
        ks.fill(0.0);
        for &t in &cfg.temps_stein {
            let s = (-1.0 / t) as f32;
            for ((kj, ksj), &dj) in k.iter_mut().zip(ks.iter_mut()).zip(&d2) {
                *kj = exp_neg(dj * s);
                *ksj += *kj;
            }
            // Σ_j k_ij (x_i − x_j), the self pair adding exactly 0.
            for c in 0..d {
                rep[c] -= weighted_diff(&k, &xt[c * n..(c + 1) * n], xi[c]) / t;
            }
        }
        for c in 0..d {
            dr[c] = (dot(&ks, &ut[c * n..(c + 1) * n]) * inv_n) as f32;
            rp[c] = (rep[c] * rep_scale) as f32;
        }
    }
}

dispatch!(stein_rows, stein_rows_avx2, stein_task, (inp: &SteinInputs, first: usize, dr_rows: &mut [f32], rp_rows: &mut [f32]));

/// §3.2–§3.5 on host slices: returns `(driving, repulsive)` for the rows `x_rows` against the
/// gathered `x_all` and `u_all`.
pub fn velocity(
    x_rows: &[f32],
    x_all: &[f32],
    u_all: &[f32],
    d: usize,
    n_global: usize,
    cfg: &FieldConfig,
) -> (Vec<f32>, Vec<f32>) {
    let (xt, ut) = (transpose(x_all, d), transpose(u_all, d));
    let inp = SteinInputs { x_rows, xt: &xt, ut: &ut, d, n_global, cfg };
    let mut driving = vec![0.0f32; x_rows.len()];
    let mut repulsive = vec![0.0f32; x_rows.len()];
    driving
        .par_chunks_mut(ROWS_PER_TASK * d)
        .zip(repulsive.par_chunks_mut(ROWS_PER_TASK * d))
        .enumerate()
        .for_each(|(task, (dr_rows, rp_rows))| stein_rows(&inp, task * ROWS_PER_TASK, dr_rows, rp_rows));
    (driving, repulsive)
}

#[cfg(test)]
mod tests {
    use super::exp_neg;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -80.0 {
            let (a, b) = (exp_neg(x) as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
            x -= 0.00731;
        }
        assert!(worst < 1e-6, "relative error {worst:e}");
        assert!(exp_neg(-200.0) < 1e-37);
    }
}
