//! The `fav` binary as a user runs it: outputs of a short job, and refusals of bad input that
//! name the offending file or key before any work starts.

use std::path::Path;
use std::process::Command;

fn fav() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fav"))
}

mod common;
use common::{examples, metrics_without_wall};

fn tmp(name: &str) -> std::path::PathBuf {
    common::tmp("cli", name)
}

/// `fav train` of the toy VAE with a 150-step pretraining cached under `d/cache`, plus `sets`
/// (`key=value` overrides), into `out`.
fn short_job(d: &Path, out: &Path, sets: &[&str]) -> std::process::Output {
    let mut c = fav();
    c.args(["train"]).arg(examples().join("toy-vae.toml"));
    c.args(["--set", "pretrain.steps=150", "--set", "pretrain.eval_every=75", "--set", "eval.samples=1024"]);
    c.arg("--set").arg(format!("pretrain.cache_dir={}", d.join("cache").display()));
    for kv in sets {
        c.args(["--set", kv]);
    }
    c.arg("--out").arg(out).output().unwrap()
}

/// A short but real job: 150 pretraining steps, 40 FAV steps; every output is there and parses.
#[test]
fn short_job_writes_the_run_directory() {
    let d = tmp("short");
    let out = d.join("run");
    let st = short_job(&d, &out, &["steps=40", "eval.every=20", "fav.ref_pool=20000"]);
    assert!(st.status.success(), "fav train failed: {}", String::from_utf8_lossy(&st.stderr));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![20, 40]);
    for l in &lines {
        for k in ["loss", "kl", "mmd2", "reward_mean", "wall_s"] {
            assert!(l[k].as_f64().is_some_and(f64::is_finite), "metrics.jsonl field {k}: {l}");
        }
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for part in ["base", "final"] {
        for k in ["kl", "mmd2", "reward_mean"] {
            assert!(s[part][k].as_f64().is_some_and(f64::is_finite), "summary {part}.{k}: {s}");
        }
    }
    assert_eq!(s["steps"], 40);
    assert_eq!(s["seed"], 0);
    assert!(s["wall_s"].as_f64().unwrap() > 0.0);
    // Weights by module path, loadable by any safetensors reader.
    let bytes = std::fs::read(out.join("final.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&"layers.0.weight".to_string()), "{names:?}");
    assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), &[8, 256]);
    for picture in ["samples.png", "curves.png"] {
        let png = std::fs::read(out.join(picture)).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{picture}");
    }

    // The pretrained base was cached: a second run finds it instead of pretraining.
    let again = short_job(&d, &d.join("run2"), &["steps=1", "eval.every=1", "fav.ref_pool=2000"]);
    assert!(again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("using cached base generator") && !err.contains("pretraining the base"), "{err}");

    // Same config and seed: bit-identical weights and metrics; another seed: different weights.
    let rerun = |seed: u64, dir: &str| {
        let seed = format!("seed={seed}");
        let o = short_job(&d, &d.join(dir), &["steps=10", "eval.every=5", "fav.ref_pool=4000", &seed]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let w = std::fs::read(d.join(dir).join("final.safetensors")).unwrap();
        (w, metrics_without_wall(&d.join(dir)))
    };
    let (a, b) = (rerun(0, "det-a"), rerun(0, "det-b"));
    assert!(a.0 == b.0, "same seed gave different final.safetensors");
    assert_eq!(a.1, b.1, "same seed gave different metrics");
    let c = rerun(5, "det-c");
    assert!(a.0 != c.0, "a different seed gave identical weights");
}

fn refused(args: &[&str], must_name: &str) {
    let out = fav().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "expected refusal for {args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(must_name), "error for {args:?} must name {must_name:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_refused_naming_it() {
    let d = tmp("bad");
    let broken = d.join("broken.toml");
    std::fs::write(&broken, "seed = 0\n[fav\nbeta = 1").unwrap();
    let unknown = d.join("unknown.toml");
    std::fs::write(&unknown, "seed = 0\n[fav]\nbetta = 1.0\n").unwrap();
    let wrong = d.join("wrong.toml");
    std::fs::write(&wrong, "[model]\nfamily = \"gan\"\n").unwrap();
    let missing_base = d.join("nobase.toml");
    std::fs::write(&missing_base, "steps = 1\n[model]\nbase = \"/nonexistent/base.safetensors\"\n").unwrap();
    let s = |p: &Path| p.display().to_string();
    refused(&["train", &s(&d.join("absent.toml"))], "absent.toml");
    refused(&["train", &s(&broken)], "broken.toml");
    refused(&["train", &s(&unknown)], "betta");
    refused(&["train", &s(&wrong)], "model.family");
    refused(&["train", "--set", "steps=-3"], "steps");
    refused(&["train", "--set", "fav.beta=-1"], "fav.beta");
    refused(&["train", "--set", "eval.every=0"], "eval.every");
    refused(&["train", "--set", "nokey"], "nokey");
    refused(&["train", "--set", "device=tpu"], "device");
    refused(
        &["train", "--set", "task=image", "--set", "eval.samples=320", "--set", "image.lora_targets=[\"attn\"]"],
        "image.lora_targets",
    );
    refused(
        &["train", "--set", "task=image", "--set", "fav.conditions=3", "--set", "eval.samples=320"],
        "fav.conditions",
    );
    let image = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["train", "--set", "task=image", "--set", "eval.samples=320"];
        v.extend(extra.iter().flat_map(|kv| ["--set", kv]));
        v
    };
    refused(&image(&["image.reward=jpeg_compress"]), "fav.reward_grad");
    refused(&image(&["image.reward=\"clip\""]), "image.reward");
    refused(&image(&["image.family=\"sana\""]), "image.family");
    refused(&image(&["image.sample_steps=2"]), "image.sample_steps"); // the GAN is one-step
    refused(&image(&["image.family=\"meanflow\"", "image.sample_steps=5"]), "image.sample_steps");
    refused(&image(&["image.family=\"meanflow\"", "image.lora_targets=[\"fc\"]"]), "image.lora_targets");
    refused(&image(&["image.family=\"meanflow\"", "image.sample_steps=2", "image.draft_k=3"]), "image.draft_k");
    #[cfg(not(feature = "cuda"))]
    refused(&["train", "--set", "device=cuda"], "--features cuda");
    refused(&["train", &s(&missing_base), "--out", &s(&d.join("r"))], "/nonexistent/base.safetensors");
}
