//! Preempted jobs come back exactly: a job killed with SIGKILL mid-run, or stopped by SIGUSR1,
//! SIGTERM or SIGINT (checkpoint, then exit code 75), and started again with the same command
//! ends with the same bytes as one that was never interrupted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{checkpoints, metrics_without_wall, ok};

fn tmp(name: &str) -> PathBuf {
    common::tmp("resume", name)
}

fn train(d: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fav"));
    c.arg("train").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/toy-vae.toml"));
    c.args(common::small_job(d, &["steps=80", "eval.every=10", "checkpoint.every=10", "checkpoint.keep=2"]));
    c.args(extra).arg("--out").arg(out);
    c
}

#[test]
fn sigkill_then_resume_gives_the_uninterrupted_result() {
    let d = tmp("kill");
    let full = d.join("full");
    ok(train(&d, &full, &[]).output().unwrap());
    assert_eq!(checkpoints(&full), vec![70, 80], "checkpoint.keep = 2 keeps the newest two");

    // The same job, killed hard once a checkpoint past step 20 exists (a step the clock picks).
    let cut = d.join("cut");
    let mut job = train(&d, &cut, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while checkpoints(&cut).last().is_none_or(|&s| s < 20) {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        if job.try_wait().unwrap().is_some() {
            panic!("the job finished before it could be killed; make it longer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    job.kill().unwrap(); // SIGKILL
    job.wait().unwrap();
    let at = *checkpoints(&cut).last().unwrap();
    assert!(at < 80, "killed before the end (last checkpoint {at})");

    // Started again with the same command: it resumes by itself.
    let err = ok(train(&d, &cut, &[]).output().unwrap());
    assert!(err.contains("resuming from checkpoint"), "{err}");
    let a = std::fs::read(full.join("final.safetensors")).unwrap();
    let b = std::fs::read(cut.join("final.safetensors")).unwrap();
    assert!(a == b, "resumed run differs from the uninterrupted one (killed after checkpoint {at})");
    assert_eq!(metrics_without_wall(&full), metrics_without_wall(&cut), "metrics.jsonl continues where it stopped");
    let summary = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
    };
    let (s, f) = (summary(&cut), summary(&full));
    assert!(s["resumed_from"].as_u64().is_some_and(|r| r >= at), "{s}");
    // The best-EMA-MMD² weights survive the kill: same evaluation, same bytes.
    assert!(f["best"]["step"].as_u64().is_some(), "{f}");
    assert_eq!(s["best"], f["best"], "best evaluation after resuming from {at}");
    let best = |dir: &Path| std::fs::read(dir.join("best.safetensors")).unwrap();
    assert!(best(&full) == best(&cut), "best.safetensors differs after resuming from {at}");
}

#[test]
fn resume_none_starts_afresh_and_a_changed_config_is_refused() {
    let d = tmp("fresh");
    let out = d.join("run");
    ok(train(&d, &out, &["--set", "steps=20"]).output().unwrap());
    // A fresh run over a store that holds another run's checkpoints is refused, naming the
    // store, and leaves that run's files alone (issue 14: it used to mix with them).
    let before = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let o = train(&d, &out, &["--set", "steps=30", "--resume", "none"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("already holds checkpoints") && err.contains("checkpoints"), "{err}");
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), before, "the earlier run's outputs stay");
    // Into a run directory of its own it starts afresh.
    let err = ok(train(&d, &d.join("run2"), &["--set", "steps=30", "--resume", "none"]).output().unwrap());
    assert!(!err.contains("resuming from checkpoint"), "{err}");
    // A checkpoint made with another learning rate is not silently continued.
    let o = train(&d, &out, &["--set", "steps=40", "--set", "fav.lr=3e-4"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("different configuration") && err.contains("--resume none"), "{err}");
    // Extending a finished run (only `steps` changed) continues it.
    let err = ok(train(&d, &out, &["--set", "steps=40"]).output().unwrap());
    assert!(err.contains("resuming from checkpoint"), "{err}");
    // An explicit store with nothing in it is an error that names it.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = train(&d, &d.join("other"), &["--resume", empty.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no complete checkpoint") && err.contains("empty"), "{err}");
}

/// Exit code of a job that stopped on a signal with its checkpoint saved (README, "Preemption").
const EXIT_PREEMPTED: i32 = 75;

#[test]
fn a_signal_stops_with_a_checkpoint_and_the_rerun_finishes_identically() {
    let d = tmp("signal");
    let full = d.join("full");
    // Checkpoints only at the end: whatever is resumed below was written because of the signal.
    let only_end = ["--set", "checkpoint.every=1000"];
    ok(train(&d, &full, &only_end).output().unwrap());
    for sig in ["USR1", "TERM", "INT"] {
        let cut = d.join(sig);
        let log = d.join(format!("{sig}.log"));
        let mut job = train(&d, &cut, &only_end)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Signal once training has evaluated (step 10 of 80).
        let t = Instant::now();
        while !std::fs::read_to_string(cut.join("metrics.jsonl")).is_ok_and(|m| !m.is_empty()) {
            assert!(t.elapsed() < Duration::from_secs(120), "training did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = job.id().to_string();
        assert!(Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap().success());
        let status = common::wait_or_kill(&mut job, Duration::from_secs(60), "the job did not stop after a signal");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(EXIT_PREEMPTED), "SIG{sig}: {text}");
        let at = checkpoints(&cut);
        assert!(at.len() == 1 && at[0] < 80, "SIG{sig}: one checkpoint, at the step it stopped: {at:?}\n{text}");
        assert!(text.contains(&format!("signal=\"SIG{sig}\"")), "the log names the signal: {text}");

        let err = ok(train(&d, &cut, &only_end).output().unwrap());
        assert!(err.contains("resuming from checkpoint"), "{err}");
        let a = std::fs::read(full.join("final.safetensors")).unwrap();
        let b = std::fs::read(cut.join("final.safetensors")).unwrap();
        assert!(a == b, "SIG{sig}: resumed from step {} differs from the uninterrupted run", at[0]);
        assert_eq!(metrics_without_wall(&full), metrics_without_wall(&cut));
    }
}

/// A signal during pretraining (which may take longer than a Slurm grace period) stops the job
/// at once with the preemption code, and leaves no half-trained base in the cache.
#[test]
fn a_signal_during_pretraining_stops_promptly_without_caching_a_partial_base() {
    let d = tmp("signal-pretraining");
    let run = d.join("run");
    let log = d.join("log");
    let mut job = train(&d, &run, &["--set", "pretrain.steps=1000000"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("pretraining the base generator")) {
        assert!(t.elapsed() < Duration::from_secs(60), "pretraining did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(job.try_wait().unwrap().is_none(), "a million pretraining steps ended early");
    assert!(Command::new("kill").args(["-TERM", &job.id().to_string()]).status().unwrap().success());
    let signalled = Instant::now();
    let status = common::wait_or_kill(&mut job, Duration::from_secs(60), "pretraining did not stop after SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(EXIT_PREEMPTED), "{text}");
    // A step of this pretraining takes milliseconds; 10 s leaves room for a loaded machine.
    assert!(signalled.elapsed() < Duration::from_secs(10), "took {:?} to stop", signalled.elapsed());
    assert!(text.contains("stopped while training the base generator"), "{text}");
    let cached: Vec<_> = std::fs::read_dir(d.join("cache")).map(|r| r.flatten().collect()).unwrap_or_default();
    assert!(cached.is_empty(), "nothing is cached from a stopped pretraining: {cached:?}");
    assert!(checkpoints(&run).is_empty(), "no checkpoint before alignment");
}

/// A LoRA image job (learned reward, small pretraining cached under `<d>/cache`).
fn image_train(d: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fav"));
    c.arg("train").arg(common::examples().join("image-gan-learned.toml"));
    let cache = format!("pretrain.cache_dir=\"{}\"", d.join("cache").display());
    let kv = [
        "steps=40",
        "eval.every=10",
        "eval.samples=20",
        "checkpoint.every=1000",
        "image.gan_steps=60",
        "image.reward_steps=60",
        "image.best_of=[2]",
        "fav.batch=8",
        &cache,
    ];
    c.args(kv.iter().flat_map(|s| ["--set", s])).arg("--out").arg(out);
    c
}

/// An image job stopped by SIGUSR1 checkpoints its adapters and optimiser state and, started
/// again, ends with the same merged weights and adapters as one never stopped; `fav export` of
/// that checkpoint hands out the merged model, the PEFT-named adapters and a model card.
#[test]
fn an_image_job_stopped_by_a_signal_resumes_exactly_and_exports_its_adapters() {
    let d = tmp("image");
    let full = d.join("full");
    ok(image_train(&d, &full).output().unwrap());
    assert_eq!(checkpoints(&full), vec![40]);

    let cut = d.join("cut");
    let log = d.join("cut.log");
    let mut job =
        image_train(&d, &cut).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    // Signal once step 10 is evaluated (metrics.jsonl holds the base line and step 10).
    let t = Instant::now();
    while !std::fs::read_to_string(cut.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() >= 2) {
        assert!(t.elapsed() < Duration::from_secs(120), "training did not start");
        assert!(job.try_wait().unwrap().is_none(), "the job ended before the signal");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(Command::new("kill").args(["-USR1", &job.id().to_string()]).status().unwrap().success());
    let status = common::wait_or_kill(&mut job, Duration::from_secs(60), "the image job did not stop after SIGUSR1");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(EXIT_PREEMPTED), "{text}");
    let at = checkpoints(&cut);
    assert!(at.len() == 1 && at[0] < 40, "one checkpoint, where it stopped: {at:?}\n{text}");

    let err = ok(image_train(&d, &cut).output().unwrap());
    assert!(err.contains("resuming from checkpoint"), "{err}");
    for f in ["model.safetensors", "lora.safetensors"] {
        let (a, b) = (std::fs::read(full.join(f)).unwrap(), std::fs::read(cut.join(f)).unwrap());
        assert!(a == b, "{f}: resumed from step {} differs from the uninterrupted run", at[0]);
    }
    assert_eq!(metrics_without_wall(&full), metrics_without_wall(&cut));

    let exported = d.join("export");
    let o = Command::new(env!("CARGO_BIN_EXE_fav"))
        .args(["export", cut.join("checkpoints").to_str().unwrap(), "--out", exported.to_str().unwrap()])
        .output()
        .unwrap();
    ok(o);
    let lora = std::fs::read(exported.join("lora.safetensors")).unwrap();
    assert!(lora == std::fs::read(cut.join("lora.safetensors")).unwrap(), "the checkpoint's adapters are the run's");
    let names = safetensors::SafeTensors::deserialize(&lora).unwrap().names().len();
    assert_eq!(names, 10, "lora_A and lora_B of fc and the four convolutions");
    let merged = std::fs::read(exported.join("model.safetensors")).unwrap();
    let merged = safetensors::SafeTensors::deserialize(&merged).unwrap();
    assert!(merged.names().iter().all(|n| !n.contains("lora")), "merged weights carry no adapter tensors");
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exported.join("model_card.json")).unwrap()).unwrap();
    assert_eq!(card["task"], "image");
    assert_eq!(card["step"], 40);
    assert_eq!(card["model"]["lora"]["r"], 8);
    assert_eq!(card["model"]["lora"]["target_modules"].as_array().map(Vec::len), Some(5), "{card}");
}
