//! The CLIP image tower, forward and backward to the pixels (what FAV's loss does through the
//! reward model every step), against transformers on PyTorch in the same run, for the tiny
//! fixture config and a mid-size one (ViT-S/16 at 224², 197 tokens).
//!
//!     FAV_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p fav-trainer --bench clip_tower
//!
//! Without `FAV_BENCH_PYTHON` (a Python with torch and transformers) only this side is timed.

use burn::tensor::{Device, Tensor};
use fav_trainer::rewards::clip::{ClipConfig, VisionTower};
use std::path::Path;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mid = serde_json::json!({
        "model_type": "clip_vision_model", "hidden_size": 384, "intermediate_size": 1536,
        "num_hidden_layers": 6, "num_attention_heads": 6, "image_size": 224, "patch_size": 16,
        "hidden_act": "quick_gelu", "projection_dim": 512
    });
    let mid_path = std::env::temp_dir().join(format!("fav-bench-clip-mid-{}.json", std::process::id()));
    std::fs::write(&mid_path, mid.to_string()).unwrap();
    let threads = rayon::current_num_threads();
    let python = std::env::var("FAV_BENCH_PYTHON").ok();
    println!("| config | batch | fav fwd+bwd (ms) | PyTorch fwd+bwd (ms) | fav / PyTorch |");
    println!("|---|---|---|---|---|");
    for (name, path, batch, runs) in [
        ("tiny (fixture: width 32, 2 layers, 32², 17 tokens)", dir.join("tests/data/clip/hf_clip/config.json"), 8, 20),
        ("mid (ViT-S/16: width 384, 6 layers, 224², 197 tokens)", mid_path.clone(), 4, 5),
    ] {
        let cfg = ClipConfig::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let v = cfg.vision.unwrap();
        let device = Device::default();
        let tower = VisionTower::new(&v, &device);
        let s = v.image_size;
        let x = Tensor::<4>::random([batch, 3, s, s], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let once = || {
            let px = x.clone().autodiff().require_grad();
            let grads = tower.forward(px.clone()).sum().backward();
            px.grad(&grads).unwrap().into_data()
        };
        once();
        let times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                once();
                t.elapsed().as_secs_f64()
            })
            .collect();
        let ours = median(times);
        let torch = python.as_ref().map(|py| {
            let out = std::process::Command::new(py)
                .arg(dir.join("../scripts/bench/clip_tower.py"))
                .args([path.to_str().unwrap(), &batch.to_string(), &runs.to_string(), &threads.to_string()])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["median_s"].as_f64().unwrap()
        });
        match torch {
            Some(t) => println!("| {name} | {batch} | {:.2} | {:.2} | {:.2} |", 1e3 * ours, 1e3 * t, ours / t),
            None => println!("| {name} | {batch} | {:.2} | (set FAV_BENCH_PYTHON) | |", 1e3 * ours),
        }
    }
    println!("threads: {threads}");
    let _ = std::fs::remove_file(mid_path);
}
