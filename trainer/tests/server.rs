//! The reward server client against a real server process (`examples/reward_server.py`, the
//! standard library only) on 127.0.0.1: batched rewards and features equal the demo reward
//! computed here; FAV-B's NES gradient through the server equals the same estimate on the same
//! function computed locally (the noise is a function of seeds); a server that fails for a while
//! is retried, and one that hangs, dies or answers garbage gives a clear error within its
//! timeout — and NaN rewards, which stop a training step — never a hang.

use burn::tensor::{Device, Tensor, TensorData};
use fav_trainer::data::Condition;
use fav_trainer::rewards::server::{Server, ServerConfig};
use fav_trainer::rewards::{nes_grad, NesKey, Reward};
use fav_trainer::tensors::to_vec;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process on a free port, killed when dropped.
struct Running {
    child: Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Running {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/reward_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the reward server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Running { child, url }
}

fn client(url: &str, timeout_s: f64, retries: usize, max_batch: usize) -> Server {
    let cfg = ServerConfig { url: url.into(), timeout_s, retries, max_batch };
    Server::new(cfg, vec!["a dark room".into(), "a bright beach".into()], [4, 5]).unwrap()
}

/// The demo reward of the example server, computed here: mean red − mean blue, + 0.1·mean
/// green when the prompt says "bright".
fn demo(x: &[f32], bright: bool) -> f32 {
    let n = 20;
    let m = |c: usize| x[c * n..(c + 1) * n].iter().map(|v| f64::from(*v)).sum::<f64>() / n as f64;
    (m(0) - m(2) + if bright { 0.1 * m(1) } else { 0.0 }) as f32
}

fn images(n: usize) -> Vec<f32> {
    (0..n * 60).map(|i| ((i * 7919 % 211) as f32 / 105.0) - 1.0).collect()
}

#[test]
fn batched_rewards_and_features_are_the_servers() {
    let s = serve(&[]);
    let px = images(7);
    let prompts: Vec<Option<String>> = (0..7).map(|i| Some(if i % 2 == 0 { "bright" } else { "dim" }.into())).collect();
    // Batches of 3: three requests for seven images, in order.
    let (r, f) = client(&s.url, 10.0, 0, 3).score(&px, 7, [4, 5], &prompts, true).unwrap();
    for i in 0..7 {
        let want = demo(&px[i * 60..(i + 1) * 60], i % 2 == 0);
        assert!((r[i] - want).abs() < 1e-5, "image {i}: {} vs {want}", r[i]);
        assert_eq!(f[i].len(), 3);
    }
    // As a reward: the condition picks the prompt.
    let x = Tensor::<2>::from_data(TensorData::new(px.clone(), [7, 60]), &Device::default());
    let c = client(&s.url, 10.0, 0, 64);
    assert!(c.black_box() && c.grad(&x, Condition::Prompt(1)).is_none());
    let v = to_vec(&c.value(&x, Condition::Prompt(1)).unwrap());
    assert!((v[3] - demo(&px[180..240], true)).abs() < 1e-5);
}

#[test]
fn nes_through_the_server_is_the_local_estimate() {
    let s = serve(&[]);
    let c = client(&s.url, 10.0, 0, 64);
    let dev = Device::default();
    let x = Tensor::<2>::from_data(TensorData::new(images(3), [3, 60]), &dev);
    let key = NesKey { seed: 5, step: 2, condition: 1 };
    let seeds = [10, 11, 12];
    let remote = to_vec(&nes_grad(&x, &seeds, key, 0.01, 8, |p| c.tilted(p, Condition::Prompt(1))).unwrap());
    let local = to_vec(
        &nes_grad(&x, &seeds, key, 0.01, 8, |p| {
            let v = to_vec(p);
            let r: Vec<f32> = v.chunks(60).map(|im| demo(im, true)).collect();
            Ok(Tensor::from_data(TensorData::new(r.clone(), [r.len(), 1]), &dev))
        })
        .unwrap(),
    );
    let scale = local.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    let err = remote.iter().zip(&local).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    // The same perturbed points and function; only float32 vs float64 sums in the reward differ,
    // magnified by 1/(2σ) = 50.
    assert!(err <= 1e-3 * scale, "{err} vs scale {scale}");
}

#[test]
fn a_failing_server_is_retried() {
    let s = serve(&["--fail-first", "2"]);
    let (r, _) = client(&s.url, 10.0, 2, 64).score(&images(1), 1, [4, 5], &[None], false).unwrap();
    assert!((r[0] - demo(&images(1), false)).abs() < 1e-5);
}

#[test]
fn hangs_garbage_and_deaths_are_errors_not_hangs() {
    let hang = serve(&["--hang"]);
    let t = Instant::now();
    let e = client(&hang.url, 1.0, 1, 64).score(&images(1), 1, [4, 5], &[None], false).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(e.contains(&hang.url) && e.contains("failed 2 time(s)") && e.to_lowercase().contains("timeout"), "{e}");

    let garbage = serve(&["--garbage"]);
    let e = client(&garbage.url, 5.0, 0, 64).score(&images(1), 1, [4, 5], &[None], false).unwrap_err();
    assert!(e.contains("not {\"rewards\": [numbers]}"), "{e}");

    let dies = serve(&["--die-after", "1"]);
    let c = client(&dies.url, 5.0, 1, 64);
    assert!(c.score(&images(1), 1, [4, 5], &[None], false).is_ok());
    let e = c.score(&images(1), 1, [4, 5], &[None], false).unwrap_err();
    assert!(e.contains(&dies.url), "{e}");
    // In a job: NaN rewards, which the step refuses (never trained on).
    let x = Tensor::<2>::from_data(TensorData::new(images(2), [2, 60]), &Device::default());
    assert!(to_vec(&c.value(&x, Condition::None).unwrap()).iter().all(|v| v.is_nan()));
}
