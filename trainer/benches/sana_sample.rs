//! One whole SANA-Sprint sample — the sCM sampler's 4 transformer passes and the DC-AE decode —
//! against diffusers (`SanaSprintPipeline` with `output_type="latent"`, then `vae.decode`) on
//! PyTorch in the same run: the tiny fixture configs, and the published 0.6B transformer with the
//! DC-AE f32c32 decoder at 1024² (random float32 weights, 300 prompt tokens, no gradient).
//!
//!     FAV_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p fav-trainer --bench sana_sample
//!
//! `FAV_BENCH_SIZES=tiny` limits it to the tiny configs.

use burn::tensor::{Device, Distribution, Tensor};
use fav_trainer::models::sana::dc_ae::{DcDecoder, DecoderConfig};
use fav_trainer::models::sana::scm::{Prompts, Scm};
use fav_trainer::models::sana::{SanaTransformer, TransformerConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A manifest's `config` as a file of its own.
fn config_file(manifest: &Path, name: &str) -> PathBuf {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let p = std::env::temp_dir().join(format!("fav-bench-{name}-{}.json", std::process::id()));
    std::fs::write(&p, m["config"].to_string()).unwrap();
    p
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = dir.join("tests/data/sana");
    let only_tiny = std::env::var("FAV_BENCH_SIZES").is_ok_and(|s| s == "tiny");
    let python = std::env::var("FAV_BENCH_PYTHON").ok();
    let threads = rayon::current_num_threads();
    println!("| transformer + decoder | image | fav sample (s) | diffusers sample (s) | fav / diffusers |");
    println!("|---|---|---|---|---|");
    let cases = [
        ("tiny (fixtures)", data.join("transformer/config.json"), data.join("dc_ae_interpolate/vae/config.json"), 6, 3),
        (
            "SANA-Sprint 0.6B + DC-AE f32c32",
            config_file(&data.join("manifest_sana_sprint_0.6b_1024px.json"), "t"),
            config_file(&data.join("manifest_dc_ae_f32c32_sana.json"), "ae"),
            300,
            1,
        ),
    ];
    for (name, tpath, apath, tokens, runs) in cases.into_iter().take(if only_tiny { 1 } else { 2 }) {
        let tc = TransformerConfig::parse(&std::fs::read_to_string(&tpath).unwrap()).unwrap();
        let ac = DecoderConfig::parse(&std::fs::read_to_string(&apath).unwrap()).unwrap();
        let device = Device::default();
        let model = SanaTransformer::new(&tc, &device);
        let decoder = DcDecoder::new(&ac, &device);
        let s = tc.sample_size;
        let shape = [1, tc.in_channels, s, s];
        let latents = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let noise: Vec<Tensor<4>> =
            (0..4).map(|_| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device)).collect();
        let prompts = Prompts {
            ctx: Tensor::<3>::random([1, tokens, tc.caption_channels], Distribution::Normal(0.0, 1.0), &device),
            mask: Tensor::<2>::ones([1, tokens], &device),
        };
        let once = || {
            let z = Scm::default().sample(&model, latents.clone(), &prompts, 0.45, &noise, None);
            decoder.forward(z.div_scalar(ac.scaling_factor)).into_data()
        };
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let image = once();
                let dt = t.elapsed().as_secs_f64();
                assert!(image.shape().iter().product::<usize>() > 0);
                dt
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let ours = times[times.len() / 2];
        let side = s << (ac.levels.len() - 1);
        let torch = python.as_ref().map(|py| {
            let out = std::process::Command::new(py)
                .arg(dir.join("../scripts/bench/sana_sample.py"))
                .args([tpath.to_str().unwrap(), apath.to_str().unwrap(), &tokens.to_string(), &runs.to_string()])
                .arg(threads.to_string())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["median_s"].as_f64().unwrap()
        });
        match torch {
            Some(t) => println!("| {name} | {side}² | {ours:.3} | {t:.3} | {:.2} |", ours / t),
            None => println!("| {name} | {side}² | {ours:.3} | (set FAV_BENCH_PYTHON) | |"),
        }
    }
    println!("threads: {threads}");
}
