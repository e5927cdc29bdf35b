//! `fav train` checkpointing to a real S3-compatible server that dies mid-run: training goes on,
//! saves resume once the server is back, and the run's last checkpoint is complete and usable.

mod common;
use common::{examples, S3Server};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn training_survives_the_checkpoint_server_dying_and_returning() {
    let d = common::tmp("s3", "fault");
    let mut server = S3Server::start(&d.join("s3"));
    let out = d.join("run");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fav"));
    cmd.arg("train").arg(examples().join("toy-vae.toml"));
    for kv in ["pretrain.steps=150", "pretrain.eval_every=75", "eval.samples=1024", "fav.ref_pool=20000"] {
        cmd.args(["--set", kv]);
    }
    for kv in ["steps=400", "eval.every=50", "checkpoint.every=10", "checkpoint.url=s3://ckpt/fault-run"] {
        cmd.args(["--set", kv]);
    }
    cmd.arg("--set").arg(format!("pretrain.cache_dir={}", d.join("cache").display()));
    let log = d.join("train.log");
    cmd.arg("--out").arg(&out).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    S3Server::env(&mut cmd);
    let mut job = cmd.spawn().unwrap();

    // Kill the server once training has produced evaluations, bring it back a few seconds later.
    let t = Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() >= 1) {
        assert!(t.elapsed() < Duration::from_secs(120), "training did not start");
        if let Some(st) = job.try_wait().unwrap() {
            panic!("fav exited early ({st}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(job.try_wait().unwrap().is_none(), "training must go on while the store is down");
    server.restart();

    let status = job.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("checkpoint upload failed"), "the outage was noticed: {err}");
    // The final checkpoint is complete: exporting from the store finds step 400.
    let mut export = Command::new(env!("CARGO_BIN_EXE_fav"));
    export.args(["export", "s3://ckpt/fault-run", "--out"]).arg(d.join("export"));
    S3Server::env(&mut export);
    let o = export.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("export/model_card.json")).unwrap()).unwrap();
    assert_eq!(card["step"], 400);
}
