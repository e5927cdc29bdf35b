//! Helpers shared by the `fav` binary's integration tests.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};

#[path = "../../../storage/tests/support/seaweed.rs"]
mod seaweed;
#[allow(unused_imports)] // not every test file talks to S3
pub use seaweed::S3Server;

/// A fresh scratch directory for one test (`<tmp>/fav-<suite>-<pid>-<name>`).
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fav-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The shipped example configs.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `metrics.jsonl` of a run directory with the wall-clock field removed: what must repeat
/// exactly between runs.
pub fn metrics_without_wall(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("wall_s");
            v.to_string()
        })
        .collect()
}

/// Wait for `job` to exit; past `limit`, kill it and fail saying `what`.
pub fn wait_or_kill(job: &mut std::process::Child, limit: std::time::Duration, what: &str) -> std::process::ExitStatus {
    let t = std::time::Instant::now();
    loop {
        if let Some(s) = job.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > limit {
            let _ = job.kill();
            panic!("{what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `--set` arguments of a small toy job: a short pretraining cached under `<d>/cache` (shared by
/// the jobs of one test), a small evaluation and reference pool; then `extra` (`key=value`).
pub fn small_job(d: &Path, extra: &[&str]) -> Vec<String> {
    let mut kv: Vec<String> =
        ["pretrain.steps=150", "pretrain.eval_every=75", "eval.samples=1024", "fav.ref_pool=20000"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
    kv.push(format!("pretrain.cache_dir={}", d.join("cache").display()));
    kv.into_iter().flat_map(|s| ["--set".to_string(), s]).collect()
}

/// Steps of the complete checkpoints (with a manifest) in `<run>/checkpoints`, ascending.
pub fn checkpoints(run: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(run.join("checkpoints"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().join("manifest.json").is_file())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Tensors of a safetensors file by name, sorted.
pub type Weights = Vec<(String, Vec<f32>)>;

pub fn load(path: &Path) -> Weights {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every run's weights equal the first run's up to float rounding: `rel` of each tensor's
/// largest value.
pub fn assert_close(runs: &[(usize, Weights)], rel: f32) {
    let (_, reference) = &runs[0];
    for (np, tensors) in &runs[1..] {
        assert_eq!(tensors.len(), reference.len());
        for ((name, a), (_, b)) in reference.iter().zip(tensors) {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= rel * scale, "np {np}: {name} differs by {diff:e} (scale {scale:e}) from np 1");
        }
    }
}

/// The stderr of a run that must have succeeded (shown when it did not).
pub fn ok(o: std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

/// `fav train` arguments of the tiny text-to-image example (`examples/sana-sprint-tiny.toml`) with
/// its repository-relative paths made absolute (tests run in `launch/`), then `extra`.
pub fn t2i_args(extra: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let at = |p: &str| root.join(p).display().to_string();
    let mut a = vec!["train".to_string(), examples().join("sana-sprint-tiny.toml").display().to_string()];
    let files = [
        ("t2i.model", "examples/tiny-t2i/pipeline"),
        ("t2i.embeddings", "examples/tiny-t2i/embeddings.safetensors"),
        ("t2i.train_prompts", "examples/tiny-t2i/train.txt"),
        ("t2i.eval_prompts", "examples/tiny-t2i/eval.txt"),
        ("reward.model", "trainer/tests/data/clip/open_clip_tiny.pt"),
        ("reward.model_config", "trainer/tests/data/clip/open_clip_tiny.json"),
    ];
    for (k, p) in files {
        a.extend(["--set".to_string(), format!("{k}=\"{}\"", at(p))]);
    }
    for kv in extra {
        a.extend(["--set".to_string(), kv.to_string()]);
    }
    a
}
