//! `fav train` checkpointing to a real S3-compatible server that dies mid-run: training goes on,
//! saves resume once the server is back, and the run's last checkpoint is complete and usable.

mod common;
use common::{examples, S3Server};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `fav train` of the toy with checkpoints to `s3://ckpt/<prefix>`, logging to `<d>/<prefix>.log`;
/// returns once training has written its first evaluation.
fn start_job(d: &Path, prefix: &str, sets: &[&str]) -> (Child, PathBuf, PathBuf) {
    let out = d.join(prefix);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fav"));
    cmd.arg("train").arg(examples().join("toy-vae.toml"));
    cmd.args(common::small_job(d, sets));
    cmd.arg("--set").arg(format!("checkpoint.url=s3://ckpt/{prefix}"));
    let log = d.join(format!("{prefix}.log"));
    cmd.arg("--out").arg(&out).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    S3Server::env(&mut cmd);
    let mut job = cmd.spawn().unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() >= 1) {
        assert!(t.elapsed() < Duration::from_secs(120), "training did not start");
        if let Some(st) = job.try_wait().unwrap() {
            panic!("fav exited early ({st}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (job, out, log)
}

#[test]
fn training_survives_the_checkpoint_server_dying_and_returning() {
    let d = common::tmp("s3", "fault");
    let mut server = S3Server::start(&d.join("s3"));
    let (mut job, _out, log) = start_job(&d, "fault-run", &["steps=400", "eval.every=50", "checkpoint.every=10"]);
    // Kill the server once training has produced evaluations, bring it back a few seconds later.
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

/// A server that hangs (accepts, never answers) costs at most `checkpoint.timeout_s` per save:
/// the job finishes, says it gave up, and does not hang.
#[test]
fn a_hanging_checkpoint_server_does_not_hang_training() {
    let d = common::tmp("s3", "hang");
    let server = S3Server::start(&d.join("s3"));
    let sets = ["steps=120", "eval.every=40", "checkpoint.every=40", "checkpoint.timeout_s=4"];
    let (mut job, out, log) = start_job(&d, "hang-run", &sets);
    server.signal("-STOP");
    let status =
        common::wait_or_kill(&mut job, Duration::from_secs(120), "training still running 120 s after the server froze");
    server.signal("-CONT");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("gave up after checkpoint.timeout_s = 4 s"), "{text}");
    assert!(out.join("final.safetensors").is_file());
}
