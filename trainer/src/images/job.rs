//! The image job (`task = "image"`): the base generator and the reward model (loaded by name,
//! cached, or trained now), LoRA alignment with FAV or DRaFT, and the run directory:
//! `metrics.jsonl` (one object per evaluation), `summary.json` (base, best-of-N, final: reward,
//! diversity; the mean step-time breakdown), `samples.png` (per class: base | aligned on the
//! same seeds), `curves.png`, `model.safetensors` (adapters merged, plain module-path names) and
//! `lora.safetensors` (PEFT names); checkpoints for an exact resume.

use super::align::{self, ImageAligner, ImageEval, Settings, Timings};
use super::encoder::{self, RewardModel};
use super::family::{ImageFamily, ImageGenerator};
use super::flow::FlowGenerator;
use super::generator::ConvGenerator;
use super::shapes::{CLASSES, PIXELS, SIZE};
use super::{flow_pretrain, gan};
use crate::checkpoint::{self, CheckpointError, Resumed, Saver, State};
use crate::config::Config;
use crate::job::{
    dir_err, due, open_checkpoints, pretraining, resume_parts, share_prepared, share_resume, stop_with_checkpoint,
    JobError, MetricsLog, Observer, Outcome, Resume,
};
use crate::lora::LoraConfig;
use crate::{io, plot};
use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use bytes::Bytes;
use fav_comm::Collective;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct ImageRecord {
    pub step: usize,
    /// Last step's loss (FAV pseudo-loss, DRaFT `−λ·mean r`).
    pub loss: f64,
    /// Mean reward of the last step's training particles.
    pub train_reward: f64,
    pub grad_norm: f64,
    #[serde(flatten)]
    pub eval: ImageEval,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageSummary {
    pub task: &'static str,
    pub reward: align::ImageReward,
    pub method: align::Method,
    pub family: ImageFamily,
    pub sample_steps: usize,
    pub base: ImageEval,
    #[serde(rename = "final")]
    pub final_: ImageEval,
    /// Best-of-N sampling from the base on the same evaluation slots.
    pub best_of_n: Vec<BestOf>,
    pub steps: usize,
    pub seed: u64,
    pub world_size: usize,
    pub wall_s: f64,
    pub pretrain_s: f64,
    pub align_s: f64,
    /// Mean seconds per step in each part, rank 0.
    pub step_time: Timings,
    pub base_checkpoint: String,
    pub reward_checkpoint: String,
    /// The checkpoint step this process resumed from, if it resumed.
    pub resumed_from: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BestOf {
    pub n: usize,
    #[serde(flatten)]
    pub eval: ImageEval,
}

/// A cache file under `pretrain.cache_dir` named by `kind` and the hash of `key`.
fn cache_path(cfg: &Config, kind: &str, key: serde_json::Value) -> PathBuf {
    let hash = Sha256::digest(key.to_string().as_bytes());
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Path::new(&cfg.pretrain.cache_dir).join(format!("{kind}-{hex}.safetensors"))
}

/// Load `named` if set, else the cache, else `train()` and cache the result. Returns the module
/// and where it came from.
fn load_or_train<M: Module + ModuleSnapshot + Clone>(
    fresh: M,
    named: &str,
    cache: PathBuf,
    what: &'static str,
    train: impl FnOnce() -> Option<M>,
) -> Result<(M, String), JobError> {
    if !named.is_empty() {
        let path = PathBuf::from(named);
        return Ok((io::load(fresh, &path)?, path.display().to_string()));
    }
    if cache.is_file() {
        match io::load(fresh, &cache) {
            Ok(m) => {
                tracing::info!(path = %cache.display(), "using cached {what}");
                return Ok((m, cache.display().to_string()));
            }
            Err(e) => tracing::warn!("ignoring unusable cached {what} ({e}); training again"),
        }
    }
    let m = train().ok_or(JobError::StoppedPreparing(what))?;
    io::save(&m, &cache)?;
    Ok((m, cache.display().to_string()))
}

/// The frozen models of the run: base generator and reward model (rank 0 obtains them; every
/// rank gets rank 0's copy).
struct Models {
    base: ImageGenerator,
    encoder: RewardModel,
    base_path: String,
    reward_path: String,
    saver: Option<Saver>,
    resumed: Option<Resumed>,
}

/// Rank 0's start: the checkpoint store and, resuming, the frozen models from the checkpoint
/// (so a resume needs no cache); otherwise loaded by name, cached, or trained now.
fn prepare(
    cfg: &Config,
    out: &Path,
    resume: &Resume,
    device: &Device,
    obs: &mut dyn Observer,
    stop: &AtomicBool,
) -> Result<Models, JobError> {
    let (saver, resumed) = open_checkpoints(cfg, out, resume)?;
    let i = &cfg.image;
    if let Some(r) = resumed {
        let fresh = ImageGenerator::new(i.family, i.sample_steps, device);
        let base = fresh.from_safetensors(r.part("base.safetensors")?)?;
        let encoder = checkpoint::load_safetensors(RewardModel::new(device), r.part("reward_model.safetensors")?)?;
        let from = format!("checkpoint step {}", r.state.step);
        return Ok(Models { base, encoder, base_path: from.clone(), reward_path: from, saver, resumed: Some(r) });
    }
    let key = |kind: &str, steps: usize, batch: usize| serde_json::json!({ "v": 1, "kind": kind, "seed": i.pretrain_seed, "steps": steps, "batch": batch });
    let (encoder, reward_path) = load_or_train(
        RewardModel::new(device),
        &i.reward_model,
        cache_path(cfg, "reward-model", key("reward-model", i.reward_steps, i.reward_batch)),
        "reward model",
        || {
            tracing::info!(steps = i.reward_steps, "training the reward model");
            let mut progress = pretraining(obs, stop, "reward model", i.reward_steps);
            let (m, fit) = encoder::train(i.pretrain_seed, i.reward_steps, i.reward_batch, device, &mut progress)?;
            tracing::info!(accuracy = fit.accuracy, r2 = fit.r2, "reward model on held-out images");
            Some(m)
        },
    )?;
    let (base, base_path) = match i.family {
        ImageFamily::Gan => {
            let (g, path) = load_or_train(
                ConvGenerator::new(device),
                &i.base,
                cache_path(cfg, "conv-gan", key("conv-gan", i.gan_steps, i.gan_batch)),
                "base generator",
                || {
                    tracing::info!(steps = i.gan_steps, "pretraining the base generator (GAN)");
                    let mut progress = pretraining(obs, stop, "pretrain", i.gan_steps);
                    gan::train(i.pretrain_seed, i.gan_steps, i.gan_batch, device, &mut |s, l| progress(s, l.g))
                },
            )?;
            (ImageGenerator::Gan(g), path)
        }
        ImageFamily::Meanflow => {
            // Sampling steps are not weights: one pretrained network serves every step count.
            let (g, path) = load_or_train(
                FlowGenerator::new(i.sample_steps, device),
                &i.base,
                cache_path(cfg, "meanflow", key("meanflow", i.meanflow_steps, i.meanflow_batch)),
                "base generator",
                || {
                    tracing::info!(steps = i.meanflow_steps, "pretraining the base generator (MeanFlow)");
                    let mut progress = pretraining(obs, stop, "pretrain", i.meanflow_steps);
                    flow_pretrain::train(
                        i.pretrain_seed,
                        i.meanflow_steps,
                        i.meanflow_batch,
                        i.sample_steps,
                        device,
                        &mut progress,
                    )
                },
            )?;
            (ImageGenerator::Flow(g), path)
        }
    };
    Ok(Models { base, encoder, base_path, reward_path, saver, resumed: None })
}

fn settings(cfg: &Config) -> Result<Settings, JobError> {
    let i = &cfg.image;
    let targets = crate::lora::Targets::parse(&i.lora_targets, &i.family.layer_paths())
        .map_err(|reason| crate::config::ConfigError { key: "image.lora_targets".into(), reason })?;
    Ok(Settings {
        seed: cfg.seed,
        reward: i.reward,
        method: i.method,
        field: cfg.field(),
        k: cfg.fav.batch,
        c: cfg.fav.conditions,
        lr: cfg.fav.lr,
        max_grad_norm: cfg.fav.max_grad_norm,
        weight_decay: i.weight_decay,
        lora: LoraConfig { rank: i.lora_rank, alpha: i.lora_alpha as f32 },
        targets,
        reward_grad: cfg.fav.reward_grad,
        nes_sigma: cfg.fav.nes_sigma,
        nes_samples: cfg.fav.nes_samples,
        draft_multiplier: i.draft_multiplier,
        draft_k: i.draft_k,
    })
}

/// Run the image job into `out`. Rank 0 returns the summary, other ranks `None`. Checkpoints
/// (adapters, optimiser state, step, metrics; the frozen base and reward model) go to the run's
/// store every `checkpoint.every` steps; when `stop` is set on any rank, every rank finishes the
/// step, rank 0 saves a checkpoint and waits for it, and all return [`Outcome::Stopped`].
pub fn run_on(
    cfg: &Config,
    out: &Path,
    obs: &mut dyn Observer,
    comm: &dyn Collective,
    resume: &Resume,
    stop: &AtomicBool,
) -> Result<Outcome<ImageSummary>, JobError> {
    cfg.validate()?;
    let t0 = Instant::now();
    let lead = comm.rank() == 0;
    let device = cfg.burn_device()?;
    let prepared = if lead {
        prepare(cfg, out, resume, &device, obs, stop)
    } else {
        Ok(Models {
            base: ImageGenerator::new(cfg.image.family, cfg.image.sample_steps, &device),
            encoder: RewardModel::new(&device),
            base_path: String::new(),
            reward_path: String::new(),
            saver: None,
            resumed: None,
        })
    };
    let Some(Models { base, encoder, base_path, reward_path, mut saver, resumed }) = share_prepared(prepared, comm)?
    else {
        return Ok(Outcome::StoppedEarly);
    };
    let bcast = |e: Box<dyn std::error::Error>| crate::align::AlignError::Broadcast(e.to_string());
    let base = crate::sync::broadcast_module(base, comm).map_err(bcast)?;
    let encoder = crate::sync::broadcast_module(encoder, comm).map_err(bcast)?;
    let pretrain_s = t0.elapsed().as_secs_f64();

    let per_class = cfg.eval.samples / CLASSES.len();
    let reward = cfg.image.reward;
    let eval = |g: &ImageGenerator| align::evaluate(g, &encoder, reward, cfg.seed, per_class, &device);
    let (base_eval, base_px) = if lead { eval(&base) } else { Default::default() };
    let best_of_n: Vec<BestOf> = if lead {
        align::best_of_n(&base, &encoder, reward, cfg.seed, per_class, &cfg.image.best_of, &device)
            .into_iter()
            .map(|(n, eval)| BestOf { n, eval })
            .collect()
    } else {
        Vec::new()
    };
    if lead {
        tracing::info!(reward = base_eval.reward_mean, diversity = base_eval.diversity, "base generator");
    }

    let t_align = Instant::now();
    let mut aligner =
        ImageAligner::new(settings(cfg)?, &base, &encoder, &device, comm).map_err(crate::align::AlignError::Layout)?;
    let shared = share_resume(comm, resumed.as_ref().map(resume_parts).transpose()?)?;
    let start = match &shared {
        Some((step, model, optim)) => {
            aligner.restore(model, optim)?;
            *step
        }
        None => 0,
    };
    let (mut lines, wall_before) = match &resumed {
        Some(r) => (r.state.metrics.clone(), r.state.wall_s),
        None => {
            let rec = ImageRecord {
                step: 0,
                loss: f64::NAN,
                train_reward: f64::NAN,
                grad_norm: f64::NAN,
                eval: base_eval,
                wall_s: t0.elapsed().as_secs_f64(),
            };
            (vec![serde_json::to_string(&rec).expect("record")], 0.0)
        }
    };
    let wall = || wall_before + t0.elapsed().as_secs_f64();
    let mut metrics = lead.then(|| MetricsLog::create(out.join("metrics.jsonl"), &lines)).transpose()?;
    // The frozen models go into every checkpoint, so a resume needs neither cache nor names.
    let frozen = match saver {
        Some(_) => Some((base.safetensors()?, checkpoint::safetensors_bytes(&encoder)?)),
        None => None,
    };
    let hash = checkpoint::config_hash(cfg);
    let mut timings = Timings::default();
    let mut steps_here = 0;
    obs.phase("align", cfg.steps);
    obs.progress(start, f64::NAN);
    for step in start..cfg.steps {
        let stats = aligner.step(step)?;
        timings.add(&stats.timings);
        steps_here += 1;
        let done = step + 1;
        obs.progress(done, stats.loss);
        if due(done, cfg.fav.check_every, cfg.steps) {
            crate::sync::check_in_sync(&aligner.net, comm, done).map_err(JobError::Diverged)?;
        }
        let stopping = crate::sync::any_rank(stop.load(Ordering::Relaxed), comm)?;
        if let Some(f) = metrics.as_mut() {
            if due(done, cfg.eval.every, cfg.steps) {
                let (e, _) = eval(&aligner.plain());
                let rec = ImageRecord {
                    step: done,
                    loss: stats.loss,
                    train_reward: stats.reward,
                    grad_norm: stats.grad_norm,
                    eval: e,
                    wall_s: wall(),
                };
                let line = serde_json::to_string(&rec).expect("record");
                f.append(&line)?;
                obs.eval(
                    e.reward_mean,
                    &format!(
                        "step {:>6}  reward {:.4}  diversity {:.4}  loss {:.3e}",
                        done, e.reward_mean, e.diversity, stats.loss
                    ),
                );
                lines.push(line);
            }
        }
        let every = cfg.checkpoint.every;
        if let (Some(saver), Some((base_bytes, reward_bytes))) = (saver.as_mut(), frozen.as_ref()) {
            if stopping || due(done, every, cfg.steps) {
                let state = State {
                    step: done,
                    seed: cfg.seed,
                    world_size: comm.size(),
                    metrics: lines.clone(),
                    wall_s: wall(),
                    config: cfg.clone(),
                };
                let aligned = aligner.plain();
                let lora = crate::lora::tensors_bytes(&aligned.lora_tensors()).map_err(CheckpointError::Format)?;
                let parts = vec![
                    ("model.burnpack".to_string(), checkpoint::record_bytes(&aligner.net)?),
                    ("optimizer.burnpack".to_string(), aligner.optimizer_bytes()?),
                    ("base.safetensors".to_string(), base_bytes.clone()),
                    ("reward_model.safetensors".to_string(), reward_bytes.clone()),
                    ("model.safetensors".to_string(), aligned.merged().safetensors()?),
                    ("lora.safetensors".to_string(), Bytes::from(lora)),
                    ("state.json".to_string(), Bytes::from(serde_json::to_vec_pretty(&state).expect("state"))),
                ];
                let meta =
                    serde_json::json!({ "world_size": comm.size(), "task": "image", "family": cfg.image.family });
                saver.save(done as u64, hash.clone(), parts, meta);
            }
        }
        if stopping {
            return stop_with_checkpoint(saver.as_mut(), done, comm);
        }
    }
    if let Some(saver) = saver.as_mut() {
        let _ = saver.flush();
    }
    let align_s = t_align.elapsed().as_secs_f64();
    if !lead {
        return Ok(Outcome::Finished(None));
    }

    let aligned = aligner.plain();
    let (final_eval, final_px) = eval(&aligned);
    aligned.merged().save(&out.join("model.safetensors"))?;
    crate::lora::save_tensors(&aligned.lora_tensors(), &out.join("lora.safetensors"))
        .map_err(|e| dir_err(&out.join("lora.safetensors"), e))?;
    side_by_side(&base_px, &final_px, per_class, &out.join("samples.png"))
        .map_err(|e| dir_err(&out.join("samples.png"), e))?;
    curves(&lines, &out.join("curves.png")).map_err(|e| dir_err(&out.join("curves.png"), e))?;
    let n = steps_here.max(1) as f64;
    let step_time = Timings {
        generate: timings.generate / n,
        encode: timings.encode / n,
        field: timings.field / n,
        backward: timings.backward / n,
        comm: timings.comm / n,
    };
    let summary = ImageSummary {
        task: "image",
        reward,
        method: cfg.image.method,
        family: cfg.image.family,
        sample_steps: cfg.image.sample_steps,
        base: base_eval,
        final_: final_eval,
        best_of_n,
        steps: cfg.steps,
        seed: cfg.seed,
        world_size: comm.size(),
        wall_s: wall(),
        pretrain_s,
        align_s,
        step_time,
        base_checkpoint: base_path,
        reward_checkpoint: reward_path,
        resumed_from: shared.map(|(s, _, _)| s),
    };
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary).expect("summary"))
        .map_err(|e| dir_err(&out.join("summary.json"), e))?;
    Ok(Outcome::Finished(Some(Box::new(summary))))
}

/// `curves.png`: loss, reward, diversity and gradient norm over the lines of `metrics.jsonl`.
fn curves(lines: &[String], path: &Path) -> Result<(), String> {
    let rows: Vec<serde_json::Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series = |key: &str| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?))).filter(|p| p.1.is_finite()).collect()
    };
    plot::curves(
        &[
            ("LOSS", series("loss")),
            ("REWARD", series("reward_mean")),
            ("DIVERSITY", series("diversity")),
            ("GRAD NORM", series("grad_norm")),
        ],
        path,
    )
}

/// `samples.png`: one row per class, the first 6 evaluation samples of the base, then of the
/// aligned generator on the same seeds.
fn side_by_side(base: &[f32], aligned: &[f32], per_class: usize, path: &Path) -> Result<(), String> {
    let cols = per_class.min(6);
    let mut px = Vec::with_capacity(2 * CLASSES.len() * cols * PIXELS);
    for class in 0..CLASSES.len() {
        for set in [base, aligned] {
            let start = class * per_class * PIXELS;
            px.extend_from_slice(&set[start..start + cols * PIXELS]);
        }
    }
    plot::image_grid(&px, SIZE, 2 * cols, 2, path)
}
