//! `fav train` under real `mpirun` (feature `mpi`; OpenMPI installed): the same global batch on
//! 1, 2 and 4 ranks gives the same weights, impossible layouts are refused, and a rank that dies
//! ends the job instead of hanging it.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::examples;

fn tmp(name: &str) -> PathBuf {
    common::tmp("mpi", name)
}

fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()]);
    c.env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

/// Small job settings shared by every run, with its own pretraining cache.
fn job_args(dir: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), examples().join("toy-vae.toml").display().to_string()];
    for kv in [
        "pretrain.steps=150",
        "pretrain.eval_every=75",
        "eval.samples=1024",
        "fav.ref_pool=20000",
        "fav.check_every=10",
    ] {
        a.extend(["--set".into(), kv.into()]);
    }
    a.extend(["--set".into(), format!("pretrain.cache_dir={}", dir.join("cache").display())]);
    a
}

/// Tensors of a safetensors file by name, sorted.
type Weights = Vec<(String, Vec<f32>)>;

fn load(path: &Path) -> Weights {
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

#[test]
fn same_global_batch_on_1_2_4_ranks_gives_the_same_weights() {
    let d = tmp("invariance");
    let fav = env!("CARGO_BIN_EXE_fav");
    // Pretrain (and cache) the base once, single process.
    let st =
        Command::new(fav).args(job_args(&d)).args(["--set", "steps=1", "--out"]).arg(d.join("warm")).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let mut runs = Vec::new();
    for np in [1usize, 2, 4] {
        let out = d.join(format!("np{np}"));
        let o = mpirun(np)
            .arg(fav)
            .args(job_args(&d))
            .args(["--set", "steps=50", "--set", "eval.every=25", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "np {np}: {}", String::from_utf8_lossy(&o.stderr));
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(s["world_size"], np, "summary.json records the world size");
        runs.push((np, load(&out.join("final.safetensors"))));
    }
    assert_close(&runs);

    // Two conditions per step and the black-box (NES) gradient: each particle's estimate is
    // made once, by its owner, from its own seeds — so the ranks still agree with one process.
    let mut runs = Vec::new();
    for np in [1usize, 2] {
        let out = d.join(format!("c2-nes-np{np}"));
        let o = mpirun(np)
            .arg(fav)
            .args(job_args(&d))
            .args(["--set", "steps=20", "--set", "eval.every=20", "--set", "fav.batch=1024"])
            .args(["--set", "fav.conditions=2", "--set", "fav.reward_grad=nes", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "np {np}: {}", String::from_utf8_lossy(&o.stderr));
        runs.push((np, load(&out.join("final.safetensors"))));
    }
    assert_close(&runs);
}

/// Every run's weights equal the first run's up to float rounding.
fn assert_close(runs: &[(usize, Weights)]) {
    let (_, reference) = &runs[0];
    for (np, tensors) in &runs[1..] {
        assert_eq!(tensors.len(), reference.len());
        for ((name, a), (_, b)) in reference.iter().zip(tensors) {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            // Only the order of the gradient sums differs between world sizes: rounding, not drift.
            assert!(diff <= 1e-5 * scale, "np {np}: {name} differs by {diff:e} (scale {scale:e}) from np 1");
        }
    }
}

#[test]
fn impossible_layouts_are_refused_at_start() {
    let d = tmp("layout");
    let fav = env!("CARGO_BIN_EXE_fav");
    for (np, batch, needle) in
        [(3usize, 2048usize, "cannot be split evenly over 3 ranks"), (4, 2, "more ranks than particles")]
    {
        let t = Instant::now();
        let o = mpirun(np)
            .arg(fav)
            .args(job_args(&d))
            .args(["--set", &format!("fav.batch={batch}"), "--out"])
            .arg(d.join(format!("np{np}")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "np {np} batch {batch} must be refused");
        assert!(err.contains(needle), "np {np}: {err}");
        assert!(t.elapsed() < Duration::from_secs(30), "refusal must come before any work");
        assert!(!d.join(format!("np{np}")).join("metrics.jsonl").exists());
    }
}

#[test]
fn a_dead_rank_ends_the_job_instead_of_hanging_it() {
    let d = tmp("kill");
    let fav = env!("CARGO_BIN_EXE_fav");
    let out = d.join("run");
    let mut job = mpirun(2)
        .arg(fav)
        .args(job_args(&d))
        .args(["--set", "steps=1000000", "--set", "eval.every=5", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the ranks are training (rank 0 has written an evaluation).
    let t = Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() >= 2) {
        assert!(t.elapsed() < Duration::from_secs(120), "job did not start training");
        assert!(job.try_wait().unwrap().is_none(), "job ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Kill one rank (a child of mpirun) the hard way.
    let children = Command::new("pgrep").args(["-P", &job.id().to_string()]).output().unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&children.stdout).split_whitespace().map(String::from).collect();
    assert_eq!(pids.len(), 2, "expected two rank processes under mpirun, got {pids:?}");
    assert!(Command::new("kill").args(["-9", &pids[1]]).status().unwrap().success());
    let killed = Instant::now();
    let status = common::wait_or_kill(&mut job, Duration::from_secs(60), "the job still runs 60 s after a rank died");
    assert!(!status.success(), "a job that lost a rank must exit non-zero");
    eprintln!("job ended {:.1} s after the kill with {status}", killed.elapsed().as_secs_f64());
}

#[test]
fn a_checkpoint_from_2_ranks_resumes_on_1() {
    let d = tmp("reshape");
    let fav = env!("CARGO_BIN_EXE_fav");
    let run = |np: usize, steps: usize, out: &Path| {
        let o = mpirun(np)
            .arg(fav)
            .args(job_args(&d))
            .args([
                "--set",
                &format!("steps={steps}"),
                "--set",
                "eval.every=10",
                "--set",
                "checkpoint.every=10",
                "--out",
            ])
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "np {np}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    run(1, 40, &d.join("whole"));
    run(2, 20, &d.join("reshaped"));
    let err = run(1, 40, &d.join("reshaped"));
    assert!(err.contains("resuming from checkpoint"), "{err}");
    assert_close(&[(1, load(&d.join("whole/final.safetensors"))), (2, load(&d.join("reshaped/final.safetensors")))]);
}
