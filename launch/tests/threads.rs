//! `fav train --ranks N`: data-parallel ranks as threads of one process. The same global batch
//! on 1, 2 and 4 thread ranks gives the same weights (as over MPI), a run repeats to the bit
//! whatever the number of threads per rank, a signal stops every rank with a checkpoint that
//! resumes exactly, and a bad layout is an error, not a hang.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_close, examples, load, metrics_without_wall, ok, small_job};

fn tmp(name: &str) -> PathBuf {
    common::tmp("threads", name)
}

fn train(d: &Path, out: &Path, ranks: usize, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fav"));
    c.arg("train").arg(examples().join("toy-vae.toml")).args(small_job(d, extra));
    c.args(["--ranks", &ranks.to_string(), "--out"]).arg(out);
    c
}

#[test]
fn thread_ranks_give_the_weights_of_one_rank_and_repeat_exactly() {
    let d = tmp("invariance");
    ok(train(&d, &d.join("warm"), 1, &["steps=1"]).output().unwrap()); // pretrain and cache once
    let job = ["steps=50", "eval.every=25", "fav.check_every=10"];
    let mut runs = Vec::new();
    for ranks in [1usize, 2, 4] {
        let out = d.join(format!("ranks{ranks}"));
        let err = ok(train(&d, &out, ranks, &job).output().unwrap());
        assert!(err.contains(&format!("world_size={ranks}")), "the start line shows the world: {err}");
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(s["world_size"], ranks, "summary.json records the world size");
        runs.push((ranks, load(&out.join("final.safetensors"))));
    }
    // Only the order of the gradient sums differs between world sizes: rounding, not drift.
    assert_close(&runs, 1e-5);
    let again = d.join("ranks2-again");
    ok(train(&d, &again, 2, &job).output().unwrap());
    let bytes = |dir: &Path| std::fs::read(dir.join("final.safetensors")).unwrap();
    assert!(bytes(&again) == bytes(&d.join("ranks2")), "two runs on 2 thread ranks differ");
    // One rank uses every core (matrix products, SiLU, field rows) and its weights do not depend
    // on how many: the threads split output tiles and rows, never a sum.
    for threads in ["1", "3"] {
        let out = d.join(format!("ranks1-threads{threads}"));
        ok(train(&d, &out, 1, &job).env("RAYON_NUM_THREADS", threads).output().unwrap());
        assert!(bytes(&out) == bytes(&d.join("ranks1")), "one rank on {threads} thread(s) differs from the default");
    }
}

#[test]
fn a_signal_stops_every_thread_rank_and_the_rerun_finishes_identically() {
    let d = tmp("signal");
    let job = ["steps=80", "eval.every=10", "checkpoint.every=1000"];
    let full = d.join("full");
    ok(train(&d, &full, 2, &job).output().unwrap());
    let cut = d.join("cut");
    let log = d.join("cut.log");
    let mut child =
        train(&d, &cut, 2, &job).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(cut.join("metrics.jsonl")).is_ok_and(|m| !m.is_empty()) {
        assert!(t.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = common::wait_or_kill(&mut child, Duration::from_secs(60), "thread ranks did not stop after SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(75), "{text}");
    let at = common::checkpoints(&cut);
    assert!(at.len() == 1 && at[0] < 80, "one checkpoint, at the step it stopped: {at:?}\n{text}");

    let err = ok(train(&d, &cut, 2, &job).output().unwrap());
    assert!(err.contains("resuming from checkpoint"), "{err}");
    let bytes = |dir: &Path| std::fs::read(dir.join("final.safetensors")).unwrap();
    assert!(bytes(&full) == bytes(&cut), "resumed from step {} differs from the uninterrupted run", at[0]);
    assert_eq!(metrics_without_wall(&full), metrics_without_wall(&cut));
}

#[test]
fn a_bad_thread_layout_is_an_error_not_a_hang() {
    let d = tmp("layout");
    let t = Instant::now();
    let mut child = train(&d, &d.join("run"), 3, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let status = common::wait_or_kill(&mut child, Duration::from_secs(30), "a bad layout hung the thread ranks");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "3 ranks cannot split a batch of 2048");
    assert!(err.contains("cannot be split evenly over 3 ranks"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "refusal must come before any work");
}
