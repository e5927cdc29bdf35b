//! A fused host kernel for the same formulas as [`super`], for low-dimensional particles on a
//! CPU device (the toy's D = 2), and for every field of a GPU job (exact float32 there, where the
//! GPU's products may run in TF32: [`super::Engine`]). On a CPU the tensor path is memory-bound
//! at low D: a dozen element-wise passes over each N×M kernel block. Here each row makes one pass
//! over the columns with every kernel sum accumulated at once, rows in parallel; memory is O(M)
//! per thread, no N×M block.
//! Every kernel-weighted difference is summed as `Σ_j k_j (a_j − x)` from the differences
//! themselves, so nothing cancels (a row's self pair adds exactly 0). The golden test checks
//! this path and the tensor path against the same vectors.

use super::config::{FieldConfig, KdeClamp, Z_CLAMP};
use crate::cpu::{dispatch, exp_neg};
use rayon::prelude::*;

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
        prior_row(cfg, xi, &num, &toward, z_sum, p);
        *z_slot = z_sum as f32;
    }
}

/// §2.3 / §2.4 of one row from its kernel sums (over every temperature: `num`, `z_sum`; the
/// last temperature's: `toward`).
#[inline(always)]
fn prior_row(cfg: &FieldConfig, xi: &[f32], num: &[f64], toward: &[f64], z_sum: f64, p: &mut [f32]) {
    for c in 0..p.len() {
        p[c] = match cfg.kde_clamp {
            KdeClamp::Image => num[c] / z_sum.max(Z_CLAMP),
            KdeClamp::Toy => FieldConfig::toy_prior(cfg.temps_kde[0], toward[c], z_sum, xi[c] as f64),
        } as f32;
    }
}

dispatch!(kde_rows_passes, kde_task,
    (x: &[f32], yt: &[f32], d: usize, cfg: &FieldConfig, first: usize, p_rows: &mut [f32], z_rows: &mut [f32]));

/// Call the fused kernel `avx2::$narrow::<D>` for the run-time `d` ∈ 1..=4, or its build with
/// AVX-512's 32 registers `avx2::$wide::<D>` where the CPU has those. The caller checked AVX2.
#[cfg(target_arch = "x86_64")]
macro_rules! fused {
    ($d:expr, $narrow:ident, $wide:ident, ($($arg:expr),*)) => {
        // SAFETY (every arm): the caller checked AVX2; `wide` checks AVX-512F and AVX-512VL.
        match ($d, avx2::wide()) {
            (1, false) => unsafe { avx2::$narrow::<1>($($arg),*) },
            (2, false) => unsafe { avx2::$narrow::<2>($($arg),*) },
            (3, false) => unsafe { avx2::$narrow::<3>($($arg),*) },
            (_, false) => unsafe { avx2::$narrow::<4>($($arg),*) },
            (1, true) => unsafe { avx2::$wide::<1>($($arg),*) },
            (2, true) => unsafe { avx2::$wide::<2>($($arg),*) },
            (3, true) => unsafe { avx2::$wide::<3>($($arg),*) },
            (_, true) => unsafe { avx2::$wide::<4>($($arg),*) },
        }
    };
}

/// KDE rows: the fused AVX2 kernel at D ≤ 4 where the CPU has it, else the passes.
fn kde_rows(x: &[f32], yt: &[f32], d: usize, cfg: &FieldConfig, first: usize, p_rows: &mut [f32], z_rows: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if (1..=4).contains(&d) && std::arch::is_x86_feature_detected!("avx2") {
        return fused!(d, kde, kde_wide, (x, yt, cfg, first, p_rows, z_rows));
    }
    kde_rows_passes(x, yt, d, cfg, first, p_rows, z_rows)
}

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

dispatch!(stein_rows_passes, stein_task, (inp: &SteinInputs, first: usize, dr_rows: &mut [f32], rp_rows: &mut [f32]));

/// Stein rows: the fused AVX2 kernel at one temperature and D ≤ 4 where the CPU has it (with
/// several temperatures the driving sum is over their summed kernels), else the passes.
fn stein_rows(inp: &SteinInputs, first: usize, dr_rows: &mut [f32], rp_rows: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let (&[t], true) =
        (&inp.cfg.temps_stein[..], (1..=4).contains(&inp.d) && std::arch::is_x86_feature_detected!("avx2"))
    {
        return fused!(inp.d, stein, stein_wide, (inp, t, first, dr_rows, rp_rows));
    }
    stein_rows_passes(inp, first, dr_rows, rp_rows)
}

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

/// The fused kernels: for each row one pass over the columns that accumulates every kernel sum
/// at once. The passes above add each sum on its own, one chain of dependent 8-lane additions
/// per pass, and wait on that chain; here the sums are independent chains in flight together.
/// Every operation is the passes' own, in their order (no fused multiply-add, 8 f32 lanes per
/// 512-column chunk, the lanes and chunks added in order in f64), so the bits are the same; the
/// unit tests below check that.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{prior_row, FieldConfig, SteinInputs};
    use crate::cpu::exp_neg;
    use std::arch::x86_64::*;

    /// [`exp_neg`] on 8 lanes, operation for operation.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn exp_neg8(x: __m256) -> __m256 {
        let c = |v: f32| _mm256_set1_ps(v);
        let x = _mm256_max_ps(x, c(-87.0));
        let t = _mm256_add_ps(_mm256_mul_ps(x, c(std::f32::consts::LOG2_E)), c(12_582_912.0));
        let n = _mm256_sub_ps(t, c(12_582_912.0));
        let r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, c(0.693_145_75))), _mm256_mul_ps(n, c(1.428_606_8e-6)));
        let mut p = _mm256_add_ps(c(1.0 / 120.0), _mm256_mul_ps(r, c(1.0 / 720.0)));
        for k in [1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_add_ps(c(k), _mm256_mul_ps(r, p));
        }
        let e = _mm256_add_epi32(
            _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B40_0000)),
            _mm256_set1_epi32(127),
        );
        _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)), p)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn lanes(v: __m256) -> [f32; 8] {
        let mut a = [0.0f32; 8];
        // SAFETY: `a` holds 8 f32.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        a
    }

    /// Whether the CPU has AVX-512F and AVX-512VL as well.
    pub(super) fn wide() -> bool {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl")
    }

    fn fold(a: &[f32; 8]) -> f64 {
        a.iter().map(|&v| v as f64).sum::<f64>()
    }

    /// For the row `x` against the columns (column-major, `D × m`) at scale `s = −1/τ`, with
    /// `k_j = exp(s‖x − col_j‖²)`: `Σ_j k_j`, `Σ_j k_j (col_cj − x_c)` and, with `DRIVE`,
    /// `Σ_j k_j w_cj`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn row_sums<const D: usize, const DRIVE: bool>(
        x: &[f32],
        cols: &[f32],
        w: &[f32],
        s: f32,
    ) -> (f64, [f64; D], [f64; D]) {
        let m = cols.len() / D;
        assert!(x.len() == D && (!DRIVE || w.len() == cols.len()));
        let xv: [__m256; D] = std::array::from_fn(|c| _mm256_set1_ps(x[c]));
        let sv = _mm256_set1_ps(s);
        let (mut z, mut toward, mut drive) = (0.0f64, [0.0f64; D], [0.0f64; D]);
        for start in (0..m).step_by(512) {
            let end = (start + 512).min(m);
            let full = start + (end - start) / 8 * 8;
            let (mut az, mut at, mut ad) = (_mm256_setzero_ps(), [_mm256_setzero_ps(); D], [_mm256_setzero_ps(); D]);
            for j in (start..full).step_by(8) {
                // SAFETY: j + 8 ≤ m, so every load stays inside its column.
                let cv: [__m256; D] = std::array::from_fn(|c| unsafe { _mm256_loadu_ps(cols.as_ptr().add(c * m + j)) });
                let mut d2 = _mm256_setzero_ps();
                for c in 0..D {
                    let diff = _mm256_sub_ps(xv[c], cv[c]);
                    d2 = _mm256_add_ps(d2, _mm256_mul_ps(diff, diff));
                }
                let k = exp_neg8(_mm256_mul_ps(d2, sv));
                az = _mm256_add_ps(az, k);
                for c in 0..D {
                    at[c] = _mm256_add_ps(at[c], _mm256_mul_ps(k, _mm256_sub_ps(cv[c], xv[c])));
                    if DRIVE {
                        // SAFETY: as above, `w` has the columns' layout.
                        let wv = unsafe { _mm256_loadu_ps(w.as_ptr().add(c * m + j)) };
                        ad[c] = _mm256_add_ps(ad[c], _mm256_mul_ps(k, wv));
                    }
                }
            }
            // The chunk's last partial block goes into lane 0, one column at a time.
            let (mut az, mut at, mut ad) = (lanes(az), at.map(|v| lanes(v)), ad.map(|v| lanes(v)));
            for j in full..end {
                let mut d2 = 0.0f32;
                for c in 0..D {
                    let diff = x[c] - cols[c * m + j];
                    d2 += diff * diff;
                }
                let k = exp_neg(d2 * s);
                az[0] += k;
                for c in 0..D {
                    at[c][0] += k * (cols[c * m + j] - x[c]);
                    if DRIVE {
                        ad[c][0] += k * w[c * m + j];
                    }
                }
            }
            z += fold(&az);
            for c in 0..D {
                toward[c] += fold(&at[c]);
                drive[c] += fold(&ad[c]);
            }
        }
        (z, toward, drive)
    }

    /// [`super::kde_task`] at `D`, one fused pass per row and temperature.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn kde<const D: usize>(
        x: &[f32],
        yt: &[f32],
        cfg: &FieldConfig,
        first: usize,
        p_rows: &mut [f32],
        z_rows: &mut [f32],
    ) {
        for (r, (p, z_slot)) in p_rows.chunks_mut(D).zip(z_rows.iter_mut()).enumerate() {
            let xi = &x[(first + r) * D..(first + r + 1) * D];
            let (mut num, mut toward, mut z_sum) = ([0.0f64; D], [0.0f64; D], 0.0f64);
            for &tau in &cfg.temps_kde {
                let (z, t, _) = row_sums::<D, false>(xi, yt, &[], (-1.0 / tau) as f32);
                z_sum += z;
                toward = t;
                for c in 0..D {
                    num[c] += (2.0 / tau) * toward[c];
                }
            }
            prior_row(cfg, xi, &num, &toward, z_sum, p);
            *z_slot = z_sum as f32;
        }
    }

    /// [`super::stein_task`] at `D` with the one temperature `t`, one fused pass per row.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn stein<const D: usize>(
        inp: &SteinInputs,
        t: f64,
        first: usize,
        dr_rows: &mut [f32],
        rp_rows: &mut [f32],
    ) {
        let inv_n = 1.0 / inp.n_global as f64;
        let rep_scale = inp.cfg.repulsion.factor() * inv_n;
        for (r, (dr, rp)) in dr_rows.chunks_mut(D).zip(rp_rows.chunks_mut(D)).enumerate() {
            let xi = &inp.x_rows[(first + r) * D..(first + r + 1) * D];
            let (_, toward, drive) = row_sums::<D, true>(xi, inp.xt, inp.ut, (-1.0 / t) as f32);
            for c in 0..D {
                // 0 − x, as the passes subtract from their zeroed sum (−x would flip a zero's sign).
                let rep = 0.0f64 - toward[c] / t;
                dr[c] = (drive[c] * inv_n) as f32;
                rp[c] = (rep * rep_scale) as f32;
            }
        }
    }

    /// [`kde`] and [`stein`] where AVX-512 is there too: the same 8-lane instructions, with its
    /// 32 vector registers instead of 16 (nothing spills).
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn kde_wide<const D: usize>(
        x: &[f32],
        yt: &[f32],
        cfg: &FieldConfig,
        first: usize,
        p_rows: &mut [f32],
        z_rows: &mut [f32],
    ) {
        kde::<D>(x, yt, cfg, first, p_rows, z_rows)
    }

    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn stein_wide<const D: usize>(
        inp: &SteinInputs,
        t: f64,
        first: usize,
        dr_rows: &mut [f32],
        rp_rows: &mut [f32],
    ) {
        stein::<D>(inp, t, first, dr_rows, rp_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svgd::{KdeClamp, Repulsion};

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 1.6 - 0.8
            })
            .collect()
    }

    fn cfg(kde_clamp: KdeClamp, temps: &[f64]) -> FieldConfig {
        FieldConfig {
            beta: 1.0,
            temps_kde: temps.to_vec(),
            temps_stein: temps.to_vec(),
            kde_clamp,
            repulsion: Repulsion::TwoSided,
            tile_elems: 1 << 20,
            engine: Default::default(),
        }
    }

    /// The fused kernels give the passes' bits at every D they take, over full chunks, a partial
    /// chunk and a partial block (m = 1100 = 2·512 + 9·8 + 4), for both clamps and one or two
    /// temperatures (two: the Stein rows keep the passes).
    #[test]
    fn fused_rows_give_the_bits_of_the_passes() {
        let (n, m) = (37, 1100);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for d in 1..=4 {
            let x_all = data(m * d, d as u64);
            let (xt, ut) = (transpose(&x_all, d), transpose(&data(m * d, 10 + d as u64), d));
            let yt = transpose(&data(m * d, 20 + d as u64), d);
            for c in [cfg(KdeClamp::Toy, &[0.05]), cfg(KdeClamp::Image, &[0.3]), cfg(KdeClamp::Image, &[0.3, 0.7])] {
                let (mut p1, mut z1, mut p2, mut z2) = (vec![0.0; n * d], vec![0.0; n], vec![0.0; n * d], vec![0.0; n]);
                kde_rows(&x_all, &yt, d, &c, 3, &mut p1, &mut z1);
                kde_rows_passes(&x_all, &yt, d, &c, 3, &mut p2, &mut z2);
                assert_eq!((bits(&p1), bits(&z1)), (bits(&p2), bits(&z2)), "KDE, D = {d}, {c:?}");
                assert!(z1.iter().all(|&z| z > 0.0), "the kernel sums are not all zero");
                // The 16-register build too (the dispatch takes the 32-register one on AVX-512).
                #[cfg(target_arch = "x86_64")]
                if d == 2 && std::arch::is_x86_feature_detected!("avx2") {
                    let (mut p3, mut z3) = (vec![0.0; n * d], vec![0.0; n]);
                    // SAFETY: the CPU has AVX2, checked just above.
                    unsafe { avx2::kde::<2>(&x_all, &yt, &c, 3, &mut p3, &mut z3) };
                    assert_eq!((bits(&p3), bits(&z3)), (bits(&p2), bits(&z2)), "KDE, AVX2 build, {c:?}");
                }
                let inp = SteinInputs { x_rows: &x_all[..n * d], xt: &xt, ut: &ut, d, n_global: m, cfg: &c };
                let (mut dr1, mut rp1, mut dr2, mut rp2) =
                    (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n * d]);
                stein_rows(&inp, 0, &mut dr1, &mut rp1);
                stein_rows_passes(&inp, 0, &mut dr2, &mut rp2);
                assert_eq!((bits(&dr1), bits(&rp1)), (bits(&dr2), bits(&rp2)), "Stein, D = {d}, {c:?}");
            }
        }
    }
}
