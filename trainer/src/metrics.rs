//! Toy evaluation metrics of spec §10.5, in f64 on the host: KDE-KL on the 80×80 grid and the
//! biased MMD² with the median heuristic. Points are 2-D, row-major `[x0, y0, x1, y1, …]`.

use crate::noise::{self, Stream};
use rand::seq::index::sample;
use rayon::prelude::*;

const GRID: usize = 80;
const MARGIN: f64 = 0.5;
const DENSITY_FLOOR: f64 = 1e-12;
const MMD_SUBSAMPLE: usize = 2048;

/// A 2-D Gaussian KDE with Scott's rule (`n^(−1/6)` × sample covariance with ddof = 1).
struct Kde<'a> {
    pts: &'a [f64],
    inv: [f64; 3], // inverse kernel covariance (a, b, c) of [[a, b], [b, c]]
    norm: f64,     // 1 / (n · 2π · √det)
}

impl<'a> Kde<'a> {
    fn fit(pts: &'a [f64]) -> Self {
        let n = pts.len() / 2;
        let (mx, my) = mean2(pts);
        let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
        for p in pts.chunks_exact(2) {
            let (dx, dy) = (p[0] - mx, p[1] - my);
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
        }
        let ddof = (n as f64 - 1.0).max(1.0);
        let f2 = (n as f64).powf(-1.0 / 6.0).powi(2);
        let (a, b, c) = (f2 * sxx / ddof, f2 * sxy / ddof, f2 * syy / ddof);
        let det = a * c - b * b;
        Kde { pts, inv: [c / det, -b / det, a / det], norm: 1.0 / (n as f64 * 2.0 * std::f64::consts::PI * det.sqrt()) }
    }

    fn density(&self, x: f64, y: f64) -> f64 {
        let [ia, ib, ic] = self.inv;
        let s: f64 = self
            .pts
            .chunks_exact(2)
            .map(|p| {
                let (dx, dy) = (x - p[0], y - p[1]);
                (-0.5 * (ia * dx * dx + 2.0 * ib * dx * dy + ic * dy * dy)).exp()
            })
            .sum();
        s * self.norm
    }
}

fn mean2(pts: &[f64]) -> (f64, f64) {
    let n = (pts.len() / 2) as f64;
    let (sx, sy) = pts.chunks_exact(2).fold((0.0, 0.0), |(a, b), p| (a + p[0], b + p[1]));
    (sx / n, sy / n)
}

fn to_f64(p: &[f32]) -> Vec<f64> {
    p.iter().map(|&v| v as f64).collect()
}

/// KL(target ‖ model) between Gaussian KDEs on an 80×80 grid spanning both sets plus 0.5.
pub fn kde_kl(target: &[f32], model: &[f32]) -> f64 {
    let (p, q) = (to_f64(target), to_f64(model));
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for pt in p.chunks_exact(2).chain(q.chunks_exact(2)) {
        for a in 0..2 {
            lo[a] = lo[a].min(pt[a]);
            hi[a] = hi[a].max(pt[a]);
        }
    }
    let axis = |a: usize, i: usize| {
        let (l, h) = (lo[a] - MARGIN, hi[a] + MARGIN);
        l + (h - l) * i as f64 / (GRID - 1) as f64
    };
    let (kp, kq) = (Kde::fit(&p), Kde::fit(&q));
    let dens: Vec<(f64, f64)> = (0..GRID * GRID)
        .into_par_iter()
        .map(|g| {
            let (x, y) = (axis(0, g / GRID), axis(1, g % GRID));
            (kp.density(x, y).max(DENSITY_FLOOR), kq.density(x, y).max(DENSITY_FLOOR))
        })
        .collect();
    let (sp, sq) = dens.iter().fold((0.0, 0.0), |(a, b), (p, q)| (a + p, b + q));
    dens.iter().map(|(p, q)| (p / sp) * ((p / sp) / (q / sq)).ln()).sum()
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)
}

/// σ of the median heuristic: the lower median of the Euclidean distances (i < j) of
/// concat(x, y), subsampled to 2048 points when larger, clamped at ≥ 1e-8.
pub fn median_sigma(x: &[f32], y: &[f32], seed: u64) -> f64 {
    let all: Vec<f64> = to_f64(x).into_iter().chain(to_f64(y)).collect();
    let n = all.len() / 2;
    let pts: Vec<f64> = if n > MMD_SUBSAMPLE {
        let mut r = noise::rng(seed, Stream::Eval, 0x3d3d);
        let mut idx = sample(&mut r, n, MMD_SUBSAMPLE).into_vec();
        idx.sort_unstable();
        idx.iter().flat_map(|&i| [all[2 * i], all[2 * i + 1]]).collect()
    } else {
        all
    };
    let m = pts.len() / 2;
    let mut d: Vec<f64> = (0..m)
        .into_par_iter()
        .flat_map_iter(|i| {
            let pts = &pts;
            (i + 1..m).map(move |j| dist2(&pts[2 * i..2 * i + 2], &pts[2 * j..2 * j + 2]).sqrt())
        })
        .collect();
    if d.is_empty() {
        return 1e-8;
    }
    let k = (d.len() - 1) / 2;
    let (_, med, _) = d.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    med.max(1e-8)
}

fn mean_kernel(a: &[f64], b: &[f64], sigma: f64) -> f64 {
    let g = -1.0 / (2.0 * sigma * sigma);
    let nb = b.len() / 2;
    // Per-row sums in parallel, then a fixed-order total: the same bits on every run.
    let rows: Vec<f64> =
        a.par_chunks_exact(2).map(|p| b.chunks_exact(2).map(|q| (g * dist2(p, q)).exp()).sum::<f64>()).collect();
    let s: f64 = rows.iter().sum();
    s / ((a.len() / 2) as f64 * nb as f64)
}

/// Biased (V-statistic) MMD² with kernel `exp(−d²/(2σ²))`, diagonals included.
pub fn mmd2_with_sigma(x: &[f32], y: &[f32], sigma: f64) -> f64 {
    let (x, y) = (to_f64(x), to_f64(y));
    mean_kernel(&x, &x, sigma) + mean_kernel(&y, &y, sigma) - 2.0 * mean_kernel(&x, &y, sigma)
}

/// MMD² with σ from the median heuristic.
pub fn mmd2(x: &[f32], y: &[f32], seed: u64) -> f64 {
    mmd2_with_sigma(x, y, median_sigma(x, y, seed))
}

/// Spec §10.3 / §10.6: the best weights are those with the lowest EMA of MMD²
/// (`ema ← 0.3·new + 0.7·ema`, seeded with the first value), which rides out evaluation noise.
#[derive(Clone, Debug, Default)]
pub struct EmaBest {
    ema: Option<f64>,
    best: Option<(f64, usize)>,
}

impl EmaBest {
    const NEW: f64 = 0.3;

    /// Feed the MMD² of the evaluation at `step`; true when its EMA is the lowest so far. A
    /// non-finite MMD² is never best and leaves the average alone.
    pub fn offer(&mut self, mmd2: f64, step: usize) -> bool {
        if !mmd2.is_finite() {
            return false;
        }
        let ema = self.ema.map_or(mmd2, |e| Self::NEW * mmd2 + (1.0 - Self::NEW) * e);
        self.ema = Some(ema);
        let better = self.best.is_none_or(|(b, _)| ema < b);
        if better {
            self.best = Some((ema, step));
        }
        better
    }

    /// The lowest EMA and the step it was reached at.
    pub fn best(&self) -> Option<(f64, usize)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::EmaBest;

    #[test]
    fn ema_best_weights_the_newest_value_by_0_3() {
        let mut b = EmaBest::default();
        assert!(b.offer(1.0, 100)); // the first value seeds the EMA
        assert!(b.offer(0.0, 200)); // 0.7
        assert!(!b.offer(2.0, 300)); // 0.3·2 + 0.7·0.7 = 1.09: a noisy spike does not win
        assert!(!b.offer(0.0, 400)); // 0.763: still above 0.7
        assert!(b.offer(0.0, 500)); // 0.5341
        let (ema, step) = b.best().unwrap();
        assert_eq!(step, 500);
        assert!((ema - 0.5341).abs() < 1e-12, "{ema}");
    }
}
