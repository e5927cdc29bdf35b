//! The SANA-Sprint transformer, forward and backward to the latents, against diffusers on
//! PyTorch in the same run: the tiny fixture config, and the published 0.6B config on the 1024²
//! latent (32×32×32, 1024 tokens) with 300 prompt tokens (random float32 weights).
//!
//!     FAV_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p fav-trainer --bench sana_transformer
//!
//! `FAV_BENCH_SIZES=tiny` limits it to the tiny config. Peak memory is each process's peak RSS.

use burn::tensor::{Device, Distribution, Tensor};
use fav_trainer::models::sana::{Conditioning, SanaTransformer, TransformerConfig};
use std::path::Path;
use std::time::Instant;

fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// One case, measured in this process: median seconds of forward+backward and peak RSS.
fn measure(path: &Path, size: usize, tokens: usize, runs: usize, checkpointing: bool) -> (f64, f64) {
    let cfg = TransformerConfig::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let device = Device::default();
    let ad = if checkpointing { device.clone().autodiff().gradient_checkpointing() } else { device.clone().autodiff() };
    let model = SanaTransformer::new(&cfg, &device);
    let x = Tensor::<4>::random([1, cfg.in_channels, size, size], Distribution::Normal(0.0, 1.0), &device);
    let ctx = Tensor::<3>::random([1, tokens, cfg.caption_channels], Distribution::Normal(0.0, 1.0), &device);
    let mask = Tensor::<2>::ones([1, tokens], &device);
    let once = || {
        let px = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
        let cond = Conditioning { ctx: ctx.clone(), mask: mask.clone(), timestep: &[0.5], guidance: Some(&[0.45]) };
        let grads = model.forward(px.clone(), &cond).sum().backward();
        px.grad(&grads).unwrap().into_data()
    };
    once();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            once();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], peak_rss() as f64)
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A child measuring one case (its own process, so that its peak RSS is its own).
    if let Ok(case) = std::env::var("FAV_BENCH_CASE") {
        let v: serde_json::Value = serde_json::from_str(&case).unwrap();
        let (path, n) = (Path::new(v["path"].as_str().unwrap()), |k: &str| v[k].as_u64().unwrap() as usize);
        let (median, rss) = measure(path, n("size"), n("tokens"), n("runs"), v["ckpt"].as_bool().unwrap());
        println!("{}", serde_json::json!({ "median_s": median, "peak_rss": rss }));
        return;
    }
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tests/data/sana/manifest_sana_sprint_0.6b_1024px.json")).unwrap(),
    )
    .unwrap();
    let big = std::env::temp_dir().join(format!("fav-bench-sana-0.6b-{}.json", std::process::id()));
    std::fs::write(&big, manifest["config"].to_string()).unwrap();
    let only_tiny = std::env::var("FAV_BENCH_SIZES").is_ok_and(|s| s == "tiny");
    let python = std::env::var("FAV_BENCH_PYTHON").ok();
    let threads = rayon::current_num_threads();
    println!("| config | latent | prompt tokens | checkpointing in the pass (fav: burn balanced; PyTorch: diffusers) | fav fwd+bwd (s) | PyTorch fwd+bwd (s) | fav / PyTorch | fav peak RSS | PyTorch peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let tiny = dir.join("tests/data/sana/transformer/config.json");
    let cases = [
        ("tiny (fixture)", tiny, 8, 6, 10, false),
        ("SANA-Sprint 0.6B", big.clone(), 32, 300, 2, false),
        ("SANA-Sprint 0.6B", big.clone(), 32, 300, 2, true),
    ];
    let gib = |b: f64| b / (1u64 << 30) as f64;
    for (name, path, size, tokens, runs, ckpt) in cases.into_iter().take(if only_tiny { 1 } else { 3 }) {
        let case = serde_json::json!({ "path": path, "size": size, "tokens": tokens, "runs": runs, "ckpt": ckpt });
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env("FAV_BENCH_CASE", case.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
        let (ours, rss) = (v["median_s"].as_f64().unwrap(), gib(v["peak_rss"].as_f64().unwrap()));
        let torch = python.as_ref().map(|py| {
            let mut c = std::process::Command::new(py);
            c.arg(dir.join("../scripts/bench/sana_transformer.py")).args([
                path.to_str().unwrap(),
                &size.to_string(),
                &tokens.to_string(),
                &runs.to_string(),
                &threads.to_string(),
            ]);
            if ckpt {
                c.arg("ckpt");
            }
            let out = c.output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (v["median_s"].as_f64().unwrap(), gib(v["peak_rss"].as_f64().unwrap()))
        });
        let channels = TransformerConfig::parse(&std::fs::read_to_string(&path).unwrap()).unwrap().in_channels;
        let latent = format!("{channels}×{size}×{size}");
        let ck = if ckpt { "on" } else { "off" };
        match torch {
            Some((t, trss)) => println!(
                "| {name} | {latent} | {tokens} | {ck} | {ours:.3} | {t:.3} | {:.2} | {rss:.2} GiB | {trss:.2} GiB |",
                ours / t
            ),
            None => println!(
                "| {name} | {latent} | {tokens} | {ck} | {ours:.3} | (set FAV_BENCH_PYTHON) | | {rss:.2} GiB | |"
            ),
        }
    }
    println!("threads: {threads}");
    let _ = std::fs::remove_file(big);
}
