//! The image job end to end on a small budget (its own test binary, one test: pretraining seeds
//! burn's device generator, which parallel tests would share):
//! - FAV raises the learned reward, DRaFT does too, FAV-B lowers the JPEG size (one-step GAN
//!   generator); FAV raises the learned reward of the few-step MeanFlow generator;
//! - the run directory holds what a user reads, and the exported weights load by name: the
//!   merged model reproduces the adapted generator, the LoRA file has PEFT names.
//!
//! Margins: base and aligned models are evaluated on the same seeds, so the change in mean
//! reward is measured against the standard error of the base mean, `std/√n`; a change within
//! 3 standard errors could be chance.

use burn::tensor::Device;
use fav_trainer::config::{Config, Method, Task};
use fav_trainer::models::image::{ConvGenerator, FlowGenerator};
use fav_trainer::models::Generator;
use fav_trainer::observe::Quiet;
use fav_trainer::rewards::learned::RewardModel;
use fav_trainer::svgd::{KdeClamp, Repulsion};
use fav_trainer::tasks::image::eval::Judge;
use fav_trainer::tasks::image::ImageSummary;
use fav_trainer::{run_on, Env, Outcome, Resume};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fav-image-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(cache: &Path) -> Config {
    let mut c = Config { task: Task::Image, steps: 60, ..Config::default() };
    c.pretrain.cache_dir = cache.display().to_string();
    c.image.gan_steps = 300;
    c.image.reward_steps = 400;
    c.image.best_of = vec![4];
    c.fav.beta = 10.0;
    c.fav.temps_kde = vec![0.3];
    c.fav.temps_stein = vec![0.3];
    c.fav.kde_clamp = KdeClamp::Image;
    c.fav.repulsion = Repulsion::OneSided;
    c.fav.batch = 16;
    c.fav.conditions = 2;
    c.fav.lr = 5e-4;
    c.fav.max_grad_norm = 2.0;
    c.eval.samples = 320;
    c.eval.every = 30;
    c.checkpoint.every = 0;
    c
}

fn env(stop: &AtomicBool) -> Env<'_> {
    Env { comm: &fav_comm::SingleProcess, resume: Resume::Fresh, stop, device_index: 0, local_ranks: 1 }
}

fn run(cfg: &Config, out: &Path) -> ImageSummary {
    match run_on(cfg, out, &mut Quiet, &env(&AtomicBool::new(false))) {
        Ok(Outcome::Finished(Some(r))) => serde_json::from_value(r.summary).expect("an image summary"),
        Ok(_) => panic!("a single process that nothing stops finishes as rank 0"),
        Err(e) => panic!("{e}"),
    }
}

/// The mean reward of `gen` on the evaluation seeds of `s`'s run (32 per class).
fn reward_of<G: Generator>(gen: &G, s: &ImageSummary, reward: &str, steps: usize) -> f64 {
    let dev = Device::flex();
    let encoder = fav_trainer::weights::load(RewardModel::new(&dev), Path::new(&s.reward_checkpoint)).unwrap();
    let cfg = fav_trainer::config::RewardConfig::default();
    let inputs = fav_trainer::rewards::Inputs {
        learned: &encoder,
        cfg: &cfg,
        prompts: fav_trainer::tasks::image::prompts(),
        image: [32, 32],
        device: &dev,
    };
    let r = fav_trainer::rewards::image(reward, &inputs).unwrap().unwrap();
    let judge = Judge { reward: &r, encoder: &encoder, seed: 0, per_class: 32, sample_steps: steps, device: dev };
    judge.evaluate(gen).unwrap().0.reward_mean
}

fn standard_error(s: &ImageSummary) -> f64 {
    s.base.reward_std / 320f64.sqrt()
}

#[test]
fn fav_draft_and_fav_b_move_the_reward_and_exports_load() {
    let d = tmp("align");
    let cache = d.join("cache");

    let cfg = config(&cache);
    let fav = run(&cfg, &d.join("fav"));
    eprintln!("FAV learned: {fav:?}");
    let se = standard_error(&fav);
    assert!(
        fav.final_.reward_mean > fav.base.reward_mean + 3.0 * se,
        "FAV did not raise the learned reward: {:.4} → {:.4} (s.e. {se:.4})",
        fav.base.reward_mean,
        fav.final_.reward_mean
    );
    for f in ["metrics.jsonl", "summary.json", "samples.png", "curves.png", "model.safetensors", "lora.safetensors"] {
        assert!(d.join("fav").join(f).is_file(), "run directory lacks {f}");
    }
    assert_eq!(std::fs::read_to_string(d.join("fav/metrics.jsonl")).unwrap().lines().count(), 3, "steps 0, 30, 60");

    // The merged export is a plain generator: it loads by name and reproduces the adapted one.
    let dev = Device::flex();
    let load = |p: &Path| fav_trainer::weights::load(ConvGenerator::new(&dev), p).unwrap();
    let merged = reward_of(&load(&d.join("fav/model.safetensors")), &fav, "learned", 1);
    assert!(
        (merged - fav.final_.reward_mean).abs() < 1e-4,
        "merged weights reproduce the adapted generator: {merged} vs {}",
        fav.final_.reward_mean
    );
    let base = reward_of(&load(Path::new(&fav.base_checkpoint)), &fav, "learned", 1);
    assert!((base - fav.base.reward_mean).abs() < 1e-4);
    let lora = std::fs::read(d.join("fav/lora.safetensors")).unwrap();
    let lora = safetensors::SafeTensors::deserialize(&lora).unwrap();
    let mut names = lora.names();
    names.sort();
    assert!(names.contains(&"fc.lora_A.weight") && names.contains(&"convs.3.lora_B.weight"), "{names:?}");
    assert_eq!(names.len(), 10, "A and B for fc and the four convolutions");

    // A base file of another model is refused, naming the file and the tensors.
    let mut wrong = cfg.clone();
    wrong.image.base = fav.reward_checkpoint.clone();
    let e = run_on(&wrong, &d.join("wrong"), &mut Quiet, &env(&AtomicBool::new(false))).unwrap_err().to_string();
    assert!(e.contains(&fav.reward_checkpoint), "{e}");

    let mut draft = cfg.clone();
    draft.image.method = Method::Draft;
    let draft = run(&draft, &d.join("draft"));
    eprintln!("DRaFT: {draft:?}");
    assert!(draft.final_.reward_mean > draft.base.reward_mean + 3.0 * standard_error(&draft), "{draft:?}");

    let mut jpeg = cfg.clone();
    jpeg.image.reward = "jpeg_compress".into();
    jpeg.fav.reward_grad = fav_trainer::config::RewardGrad::Nes;
    jpeg.fav.nes_sigma = 0.005;
    jpeg.fav.beta = 0.01;
    let jpeg = run(&jpeg, &d.join("jpeg"));
    eprintln!("FAV-B JPEG compress: {jpeg:?}");
    assert!(jpeg.final_.reward_mean > jpeg.base.reward_mean + 3.0 * standard_error(&jpeg), "{jpeg:?}");

    // The few-step family: a 2-step MeanFlow base (short pretraining), adapters on every layer,
    // FAV backpropagating through both sampling steps.
    let mut flow = cfg.clone();
    flow.image.family = "meanflow".into();
    flow.image.sample_steps = 2;
    flow.image.meanflow_steps = 300;
    flow.image.lora_targets = vec!["all".into()];
    let flow = run(&flow, &d.join("meanflow"));
    eprintln!("FAV learned, MeanFlow: {flow:?}");
    assert!(flow.final_.reward_mean > flow.base.reward_mean + 3.0 * standard_error(&flow), "{flow:?}");
    let lora = std::fs::read(d.join("meanflow/lora.safetensors")).unwrap();
    let n = safetensors::SafeTensors::deserialize(&lora).unwrap().names().len();
    let layers = fav_trainer::lora::layers(&FlowGenerator::new(&Device::flex())).len();
    assert_eq!(n, 2 * layers, "A and B of every MeanFlow layer");
    let _ = std::fs::remove_dir_all(&d);
}
