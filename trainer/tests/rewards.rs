//! The reward conformance suite (`fav_trainer::rewards::conformance`) over every reward and
//! feature map, and FAV-B's antithetic NES estimator (spec §9.1) itself.

use burn::tensor::{Device, Tensor};
use fav_trainer::config::{RewardConfig, ServerConfig};
use fav_trainer::data::Condition;
use fav_trainer::rewards::learned::{RewardModel, EMBED};
use fav_trainer::rewards::toy::ClusterReward;
use fav_trainer::rewards::{self, conformance, nes_grad, NesKey, Reward};
use fav_trainer::tensors::{matrix, to_vec};

/// Points between the toy's clusters, where ∇ log r is large and smooth.
fn points(dev: &Device) -> Tensor<2> {
    matrix(vec![0.5, 2.0, -1.0, 1.5, 2.2, -0.3, 0.0, -1.0], 4, 2, dev)
}

/// Embedding-like rows in [−1, 1].
fn embeddings(dev: &Device) -> Tensor<2> {
    matrix((0..4 * EMBED).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect(), 4, EMBED, dev)
}

/// Images in [−1, 1], flattened.
fn pixels(n: usize, dev: &Device) -> Tensor<2> {
    matrix((0..n * 3072).map(|i| ((i * 7919 % 255) as f32 / 127.5) - 1.0).collect(), n, 3072, dev)
}

/// The files (tiny random models of each published layout, `scripts/fixtures/clip.py`) or the
/// server a registered reward is built from.
fn published(name: &str, server: &str) -> RewardConfig {
    let data = |f: &str| format!("{}/tests/data/clip/{f}", env!("CARGO_MANIFEST_DIR"));
    let open_clip = RewardConfig {
        model: data("open_clip_tiny.pt"),
        model_config: data("open_clip_tiny.json"),
        ..Default::default()
    };
    match name {
        "aesthetic" => RewardConfig { model: data("hf_clip"), head: data("aesthetic_mlp.pth"), ..Default::default() },
        "hpsv2" | "pickscore" | "clip_score" => open_clip,
        "nsfw" => RewardConfig { model: data("nsfw_vit"), ..Default::default() },
        _ => RewardConfig { server: ServerConfig { url: server.into(), ..Default::default() }, ..Default::default() },
    }
}

/// `examples/reward_server.py` on a free port, killed when dropped.
struct Served {
    child: std::process::Child,
    url: String,
}

impl Served {
    fn start() -> Self {
        let script = format!("{}/../examples/reward_server.py", env!("CARGO_MANIFEST_DIR"));
        let mut child = std::process::Command::new("python3")
            .args([script.as_str(), "--port", "0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the reward server");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        Self { child, url: line.trim().rsplit(' ').next().unwrap().to_string() }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every reward: deterministic finite values; the exact gradient agrees with the NES estimate
/// (the toy's log r: σ = 1e-3 leaves no smoothing bias and 20 000 pairs put the standard error
/// near 1% of |∇R|; the learned head is linear, so ĝ = (1/n)Σ(w·u)u, whose cosine to w is about
/// sqrt(n/(n+D+1)) ≈ 0.99 for n = 4096, D = 64); a black box has none and a finite estimate.
#[test]
fn every_reward_conforms() {
    let dev = Device::flex();
    dev.seed(5);
    let model = RewardModel::new(&dev);
    let toy = ClusterReward::new(&dev);
    let x = points(&dev);
    conformance::values_are_deterministic(&toy, &x, Condition::None).unwrap();
    conformance::gradient_matches_nes(&toy, &x, Condition::None, 1e-3, 20_000, 0.99).unwrap();
    let server = Served::start();
    for name in rewards::image_names() {
        let inputs = rewards::Inputs {
            learned: &model,
            cfg: &published(name, &server.url),
            prompts: vec!["a disc".into(), "a square, in red".into()],
            image: [32, 32],
            device: &dev,
        };
        let r = rewards::image(name, &inputs).expect("registered").unwrap_or_else(|e| panic!("{name}: {e}"));
        let particles = r.features.features(pixels(3, &dev));
        let cond = Condition::Class(1);
        conformance::values_are_deterministic(r.reward.as_ref(), &particles, cond)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        conformance::features_are_differentiable(r.features.as_ref(), &pixels(2, &dev))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match r.reward.black_box() {
            true => assert!(r.reward.grad(&particles, cond).is_none(), "{name}: a black box has no gradient"),
            false => {
                // The learned head's 64-d embeddings; a published reward's own features.
                let x = if name == "learned" { embeddings(&dev) } else { particles.clone() };
                conformance::gradient_matches_nes(r.reward.as_ref(), &x, cond, 0.01, 4096, 0.97)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        if r.reward.black_box() {
            conformance::gradient_matches_nes(r.reward.as_ref(), &particles, cond, 0.005, 2, 0.0)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// Each component of the toy's NES estimate within 5% of |∇R|.
#[test]
fn nes_converges_to_the_exact_gradient() {
    let dev = Device::flex();
    let reward = ClusterReward::new(&dev);
    let x = points(&dev);
    let exact = to_vec(&reward.grad(&x, Condition::None).expect("differentiable"));
    let key = NesKey { seed: 3, step: 7, condition: 0 };
    let est =
        to_vec(&nes_grad(&x, &[10, 11, 12, 13], key, 1e-3, 20_000, |p| reward.tilted(p, Condition::None)).unwrap());
    for i in 0..4 {
        let (e, g) = (&exact[2 * i..2 * i + 2], &est[2 * i..2 * i + 2]);
        let err = ((e[0] - g[0]).powi(2) + (e[1] - g[1]).powi(2)).sqrt();
        let norm = (e[0].powi(2) + e[1].powi(2)).sqrt();
        assert!(err < 0.05 * norm, "particle {i}: exact {e:?}, NES {g:?}");
    }
}

#[test]
fn a_particles_estimate_depends_only_on_its_own_identity() {
    let dev = Device::flex();
    let reward = ClusterReward::new(&dev);
    let tilt = |p: &Tensor<2>| reward.tilted(p, Condition::None);
    let x = points(&dev);
    let key = NesKey { seed: 3, step: 7, condition: 1 };
    let all = to_vec(&nes_grad(&x, &[10, 11, 12, 13], key, 0.01, 16, tilt).unwrap());
    // The same particle estimated alone (as another rank would) gives the same bits.
    let third = x.clone().slice_dim(0, 2..3);
    let alone = to_vec(&nes_grad(&third, &[12], key, 0.01, 16, tilt).unwrap());
    assert_eq!(&all[4..6], &alone[..]);
    // Another step, condition or particle seed draws other perturbations.
    for other in [NesKey { step: 8, ..key }, NesKey { condition: 2, ..key }] {
        assert_ne!(to_vec(&nes_grad(&third, &[12], other, 0.01, 16, tilt).unwrap()), alone);
    }
    assert_ne!(to_vec(&nes_grad(&third, &[99], key, 0.01, 16, tilt).unwrap()), alone);
}

/// JPEG on pixel rows: one value per image, the same as the per-image reward, sizes positive.
#[test]
fn jpeg_values_are_per_image_sizes() {
    use fav_trainer::rewards::jpeg::Jpeg;
    let dev = Device::flex();
    let px = pixels(2, &dev);
    let v = to_vec(&Jpeg::Incompress.value(&px, Condition::None).unwrap());
    let w = to_vec(&Jpeg::Compress.value(&px, Condition::None).unwrap());
    let row = to_vec(&px);
    assert_eq!(v[0], Jpeg::Incompress.reward(&row[..3072]));
    assert!(v.iter().zip(&w).all(|(a, b)| *a == -*b && *a > 0.0), "{v:?} {w:?}");
}
