//! Benchmarks behind `fav bench`: the toy FAV step and the transport-field throughput, each
//! against the machine's own limit measured in the same run (GEMM of the same engine).

use crate::config::Config;
use crate::noise::{self, Stream};
use crate::step::Timings;
use crate::svgd::{self, FieldConfig, KdeClamp, Repulsion};
use crate::tensors::{matrix, DeviceError};
use burn::tensor::{Device, Tensor};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct Timing {
    pub median_s: f64,
    pub min_s: f64,
    pub runs: usize,
}

/// Median and minimum of `runs` timed calls after `warmup` untimed ones; `f` must block until
/// its work is done (read a value back).
pub fn time(warmup: usize, runs: usize, mut f: impl FnMut()) -> Timing {
    let ok = try_time(warmup, runs, || {
        f();
        Ok::<_, std::convert::Infallible>(())
    });
    ok.unwrap_or_else(|e| match e {})
}

/// [`time`] of a call that can fail: the first error ends the timing.
pub fn try_time<E>(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<Timing, E> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(Timing { median_s: t[t.len() / 2], min_s: t[0], runs })
}

fn random(rows: usize, cols: usize, key: u64, scale: f32, device: &Device) -> Tensor<2> {
    let mut r = noise::rng(0, Stream::Eval, key);
    let v = noise::normal_block(&mut r, rows, cols).into_iter().map(|x| x * scale).collect();
    matrix(v, rows, cols, device)
}

fn block(t: &Tensor<2>) {
    let _ = t.clone().slice_dim(0, 0..1).slice_dim(1, 0..1).into_scalar::<f32>();
}

#[derive(Debug, Serialize)]
pub struct FieldBench {
    pub n: usize,
    pub m: usize,
    pub d: usize,
    pub field: Timing,
    /// GEMM-equivalent work of the field: five N×M×D products (X·Yᵀ, K·Y, X·Xᵀ, K·X, K·U).
    pub field_gflop: f64,
    pub field_gflops: f64,
    pub gemm: Timing,
    pub gemm_gflops: f64,
    pub fraction_of_gemm: f64,
}

/// The transport field (total score + velocity) for N = M particles of dimension D, against one
/// `[N, D] × [D, M]` GEMM on the same device.
pub fn field(n: usize, d: usize, runs: usize, device: &Device) -> Result<FieldBench, DeviceError> {
    // Unit-norm-ish features with τ = 0.3, like the image settings.
    let scale = (1.0 / d as f32).sqrt();
    let x = random(n, d, 1, scale, device);
    let y = random(n, d, 2, scale, device);
    let g = random(n, d, 3, 1.0, device);
    let cfg = FieldConfig {
        beta: 1.0,
        temps_kde: vec![0.3],
        temps_stein: vec![0.3],
        kde_clamp: KdeClamp::Image,
        repulsion: Repulsion::OneSided,
        tile_elems: 1 << 22,
        engine: Default::default(),
    };
    let field = try_time(1, runs, || {
        block(&svgd::transport(&x, &y, &g, &cfg)?.field.velocity);
        Ok(())
    })?;
    let yt = y.clone().transpose();
    let gemm = time(1, runs, || block(&x.clone().matmul(yt.clone())));
    let one = 2.0 * (n * n * d) as f64 / 1e9;
    let field_gflop = 5.0 * one;
    let field_gflops = field_gflop / field.median_s;
    let gemm_gflops = one / gemm.median_s;
    Ok(FieldBench {
        n,
        m: n,
        d,
        field,
        field_gflop,
        field_gflops,
        gemm,
        gemm_gflops,
        fraction_of_gemm: field_gflops / gemm_gflops,
    })
}

#[derive(Debug, Serialize)]
pub struct StepBench {
    pub family: String,
    pub batch: usize,
    pub ranks: usize,
    pub step: Timing,
    /// Mean seconds per step in each part, this rank (its own rows).
    pub parts: Timings,
}

/// The FAV step of the config's task at its (global) batch on the world of `comm`, from a
/// freshly initialised base (the step's cost does not depend on the weights), through the same
/// task and trainer a run uses.
pub fn step(
    cfg: &Config,
    warmup: usize,
    runs: usize,
    device: &Device,
    comm: &dyn fav_comm::Collective,
) -> Result<StepBench, crate::JobError> {
    let mut small = cfg.clone();
    small.fav.ref_pool = small.fav.ref_pool.min(20_000);
    crate::validate(&small)?;
    let mut task = crate::tasks::build(&small, device)?;
    task.start(comm)?;
    let trainer = task.trainer();
    let (mut k, mut parts, mut timed) = (0, Timings::default(), 0);
    let step = try_time(warmup, runs, || {
        comm.barrier()?;
        let s = trainer.step(k).map_err(|e| crate::JobError::in_step(e, k))?;
        if k >= warmup {
            parts.add(&s.timings);
            timed += 1;
        }
        k += 1;
        Ok::<_, crate::JobError>(())
    })?;
    Ok(StepBench {
        family: small.family().to_string(),
        batch: cfg.fav.batch,
        ranks: comm.size(),
        step,
        parts: parts.mean(timed),
    })
}
