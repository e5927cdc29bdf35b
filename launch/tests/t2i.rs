//! The text-to-image job end to end on CPU (`examples/sana-sprint-tiny.toml`: a tiny random
//! SANA-Sprint made by diffusers, a tiny random HPSv2-style open_clip model, random prompt
//! embeddings): FAV raises the reward on every seed, `--ranks 2` ends with the weights of one
//! rank, a job killed with SIGKILL resumes to the same bytes, and `fav export` writes a LoRA
//! file and a merged transformer that give the same images (`scripts/sana_export_check.py` checks
//! the same export with diffusers itself).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_close, checkpoints, load, metrics_without_wall, ok, t2i_args};

fn tmp(name: &str) -> PathBuf {
    common::tmp("t2i", name)
}

fn train(out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fav"));
    c.args(t2i_args(extra)).arg("--out").arg(out);
    c
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn fav_raises_the_reward_on_every_seed() {
    let d = tmp("seeds");
    let mut rises = Vec::new();
    for seed in [0, 1, 2] {
        let out = d.join(format!("seed{seed}"));
        ok(train(&out, &[&format!("seed={seed}")]).output().unwrap());
        let s = summary(&out);
        let (base, fin) = (&s["base"], &s["final"]);
        let rise = fin["reward_mean"].as_f64().unwrap() - base["reward_mean"].as_f64().unwrap();
        // The same 16 evaluation seeds before and after; the rise must stand well above the
        // noise of a 16-sample mean of the base's rewards (3 standard errors).
        let se = base["reward_std"].as_f64().unwrap() / 16f64.sqrt();
        assert!(rise > 3.0 * se, "seed {seed}: reward {base} -> {fin}: rise {rise:.4} ≤ 3 SE {:.4}", 3.0 * se);
        for f in ["samples/prompt_000.png", "samples/prompt_001.png", "curves.png", "pytorch_lora_weights.safetensors"]
        {
            assert!(out.join(f).is_file(), "seed {seed}: no {f}");
        }
        rises.push(rise);
    }
    let mean = rises.iter().sum::<f64>() / 3.0;
    let spread = (rises.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    eprintln!("reward rise over 3 seeds: {mean:.4} ± {spread:.4} ({rises:?})");
}

/// `t2i.precision = "bf16"` (the reference's arithmetic, spec §11.1) trains as float32 does: the
/// reward rises well above the evaluation noise, by nearly the same amount. bf16 rounds the
/// transformer's output at 5e-3 relative (trainer/tests/sana.rs); measured: rise 0.01061 against
/// 0.01074 in float32 (1.2% apart). A bf16 mode that lost the adapters' gradients in its casts
/// would not rise at all (100% apart).
#[test]
fn bf16_precision_trains_like_float32() {
    let d = tmp("bf16");
    let rise = |p: &str| {
        let out = d.join(p);
        ok(train(&out, &[&format!("t2i.precision={p}")]).output().unwrap());
        let s = summary(&out);
        let base = s["base"]["reward_mean"].as_f64().unwrap();
        (s["final"]["reward_mean"].as_f64().unwrap() - base, s["base"]["reward_std"].as_f64().unwrap() / 4.0)
    };
    let ((bf16, se), (f32, _)) = (rise("bf16"), rise("f32"));
    eprintln!("reward rise: bf16 {bf16:.5}, float32 {f32:.5}");
    assert!(bf16 > 3.0 * se, "bf16: rise {bf16:.4} ≤ 3 SE {:.4}", 3.0 * se);
    assert!((bf16 - f32).abs() < 0.1 * f32, "bf16 rise {bf16:.5} vs float32 {f32:.5}");
}

#[test]
fn two_thread_ranks_end_with_the_weights_of_one() {
    let d = tmp("ranks");
    let run = |steps: usize| -> Vec<_> {
        [1usize, 2]
            .iter()
            .map(|&n| {
                let out = d.join(format!("s{steps}-r{n}"));
                ok(train(&out, &[&format!("steps={steps}")]).arg("--ranks").arg(n.to_string()).output().unwrap());
                (n, load(&out.join("pytorch_lora_weights.safetensors")))
            })
            .collect()
    };
    // One step: only the order of sums differs (batch-dependent blocking in the transformer,
    // decoder and tower, the gradient all-reduce). Measured 1.9e-7 of scale; a wrong seed, shard
    // or prompt is O(1).
    let mut one = run(1);
    assert_close(&one, 1e-5);
    // The same step with the own rows regenerated one at a time for the backward pass (§6.4,
    // `t2i.micro_batch = 1`): the sums are blocked for one row instead of four. Measured 3.6e-6.
    let out = d.join("micro1");
    ok(train(&out, &["steps=1", "t2i.micro_batch=1"]).output().unwrap());
    one.truncate(1);
    one.push((1, load(&out.join("pytorch_lora_weights.safetensors"))));
    assert_close(&one, 5e-5);
    // Ten steps: the tiny random model's samples are nearly alike (feature diversity 0.03), so the
    // kernel field resolves differences at the last bits, and Adam's m/√v of near-zero gradient
    // elements magnifies them. Measured 2.3e-3 of scale (median over adapters 6e-4).
    assert_close(&run(10), 1e-2);
}

#[test]
fn gradient_checkpointing_changes_memory_not_weights() {
    let d = tmp("ckpt");
    // (sampling steps, decoder): none, both, and each alone.
    let runs: Vec<_> = [(false, false), (true, true), (true, false), (false, true)]
        .iter()
        .enumerate()
        .map(|(i, &(steps, decoder))| {
            let out = d.join(format!("ckpt-{steps}-{decoder}"));
            let (s, dc) =
                (format!("t2i.gradient_checkpointing={steps}"), format!("t2i.decoder_checkpointing={decoder}"));
            ok(train(&out, &["steps=1", &s, &dc]).output().unwrap());
            (i + 1, load(&out.join("pytorch_lora_weights.safetensors")))
        })
        .collect();
    // Recomputing each sampling step and decoder block (or the steps, or the decoder, as one
    // link) from its input repeats the same operations; only the gradients' sums are ordered
    // differently (a chain of per-link products instead of one backward pass). Measured 8.0e-6
    // of scale after one step; a wrong link in the chain (a cos(t) factor, a skipped step) is O(1).
    assert_close(&runs, 5e-5);
}

#[test]
fn sigkill_then_resume_gives_the_uninterrupted_result() {
    let d = tmp("kill");
    let args = ["steps=60", "checkpoint.every=5", "eval.every=20"];
    let full = d.join("full");
    ok(train(&full, &args).output().unwrap());
    let cut = d.join("cut");
    let mut job = train(&cut, &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while checkpoints(&cut).last().is_none_or(|&s| s < 10) {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        assert!(job.try_wait().unwrap().is_none(), "the job finished before it could be killed; make it longer");
        std::thread::sleep(Duration::from_millis(10));
    }
    job.kill().unwrap();
    job.wait().unwrap();
    let at = *checkpoints(&cut).last().unwrap();
    assert!(at < 60, "killed before the end (last checkpoint {at})");
    let err = ok(train(&cut, &args).output().unwrap());
    assert!(err.contains("resuming from checkpoint"), "{err}");
    let f = "pytorch_lora_weights.safetensors";
    assert!(std::fs::read(full.join(f)).unwrap() == std::fs::read(cut.join(f)).unwrap(), "killed after {at}: differs");
    assert_eq!(metrics_without_wall(&full), metrics_without_wall(&cut));
}

#[test]
fn export_writes_a_lora_and_a_merged_transformer_that_sample_alike() {
    let d = tmp("export");
    let run = d.join("run");
    ok(train(&run, &["steps=10"]).output().unwrap());
    let exp = d.join("export");
    let o = Command::new(env!("CARGO_BIN_EXE_fav"))
        .arg("export")
        .arg(run.join("checkpoints"))
        .arg("--out")
        .arg(&exp)
        .output()
        .unwrap();
    ok(o);
    for f in [
        "pytorch_lora_weights.safetensors",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "model_card.json",
    ] {
        assert!(exp.join(f).is_file(), "no {f}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-t2i");
    // A pipeline folder of the merged transformer and the base's decoder.
    let merged = d.join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    std::os::unix::fs::symlink(exp.join("transformer"), merged.join("transformer")).unwrap();
    std::os::unix::fs::symlink(root.join("pipeline/vae"), merged.join("vae")).unwrap();
    let sample = |model: &Path, lora: Option<&Path>, out: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_fav"));
        c.args(["sample", "--seed", "3", "--per-prompt", "2", "--model"]).arg(model);
        c.arg("--embeddings").arg(root.join("embeddings.safetensors")).arg("--out").arg(d.join(out));
        if let Some(l) = lora {
            c.arg("--lora").arg(l);
        }
        ok(c.output().unwrap());
        load(&d.join(out).join("images.safetensors")).remove(0).1
    };
    let a = sample(&merged, None, "s-merged");
    let b = sample(&root.join("pipeline"), Some(&exp.join("pytorch_lora_weights.safetensors")), "s-lora");
    let base = sample(&root.join("pipeline"), None, "s-base");
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = |x: &[f32], y: &[f32]| x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    // The merged weights are the same sums W + s·B·A in both; measured 0.0.
    assert!(diff(&a, &b) <= 1e-5 * scale, "merged vs LoRA: {} of {scale}", diff(&a, &b));
    assert!(diff(&a, &base) > 1e-3 * scale, "the LoRA changes nothing");
}
