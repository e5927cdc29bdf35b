//! The image job (`task = "image"`): the base generator and the reward model (loaded by name,
//! cached, or trained now), LoRA alignment with FAV or DRaFT, and the run directory:
//! `metrics.jsonl` (one object per evaluation), `summary.json` (base, best-of-N, final: reward,
//! diversity; the mean step-time breakdown), `samples.png` (per class: base | aligned on the
//! same seeds), `curves.png`, `model.safetensors` (adapters merged, plain module-path names) and
//! `lora.safetensors` (PEFT names).

use super::align::{self, ImageAligner, ImageEval, Settings, Timings};
use super::encoder::{self, RewardModel};
use super::gan;
use super::generator::{self, ConvGenerator};
use super::shapes::{CLASSES, PIXELS, SIZE};
use crate::config::Config;
use crate::job::{JobError, Observer};
use crate::lora::LoraConfig;
use crate::{io, plot};
use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::Device;
use fav_comm::Collective;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
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
}

#[derive(Clone, Debug, Serialize)]
pub struct BestOf {
    pub n: usize,
    #[serde(flatten)]
    pub eval: ImageEval,
}

fn dir_err(path: &Path, e: impl ToString) -> JobError {
    JobError::RunDir { path: path.to_path_buf(), reason: e.to_string() }
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
    what: &str,
    train: impl FnOnce() -> M,
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
    let m = train();
    io::save(&m, &cache)?;
    Ok((m, cache.display().to_string()))
}

/// The frozen models of the run: base generator and reward model (rank 0 obtains them; every
/// rank gets rank 0's copy).
struct Models {
    base: ConvGenerator,
    encoder: RewardModel,
    base_path: String,
    reward_path: String,
}

fn prepare(cfg: &Config, device: &Device, obs: &mut dyn Observer) -> Result<Models, JobError> {
    let i = &cfg.image;
    let key = |kind: &str, steps: usize, batch: usize| serde_json::json!({ "v": 1, "kind": kind, "seed": i.pretrain_seed, "steps": steps, "batch": batch });
    let (encoder, reward_path) = load_or_train(
        RewardModel::new(device),
        &i.reward_model,
        cache_path(cfg, "reward-model", key("reward-model", i.reward_steps, i.reward_batch)),
        "reward model",
        || {
            tracing::info!(steps = i.reward_steps, "training the reward model");
            obs.phase("reward model", i.reward_steps);
            let (m, fit) =
                encoder::train(i.pretrain_seed, i.reward_steps, i.reward_batch, device, &mut |s, l| obs.progress(s, l));
            tracing::info!(accuracy = fit.accuracy, r2 = fit.r2, "reward model on held-out images");
            m
        },
    )?;
    let (base, base_path) = load_or_train(
        ConvGenerator::new(device),
        &i.base,
        cache_path(cfg, "conv-gan", key("conv-gan", i.gan_steps, i.gan_batch)),
        "base generator",
        || {
            tracing::info!(steps = i.gan_steps, "pretraining the base generator (GAN)");
            obs.phase("pretrain", i.gan_steps);
            gan::train(i.pretrain_seed, i.gan_steps, i.gan_batch, device, &mut |s, l| obs.progress(s, l.g))
        },
    )?;
    Ok(Models { base, encoder, base_path, reward_path })
}

fn settings(cfg: &Config) -> Result<Settings, JobError> {
    let i = &cfg.image;
    let targets = generator::lora_targets(&i.lora_targets)
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
        nes_sigma: cfg.fav.nes_sigma,
        nes_samples: cfg.fav.nes_samples,
        draft_multiplier: i.draft_multiplier,
    })
}

/// Run the image job into `out`. Rank 0 returns the summary, other ranks `None`.
/// Image runs do not checkpoint yet: `stop` ends the run early without one.
pub fn run_on(
    cfg: &Config,
    out: &Path,
    obs: &mut dyn Observer,
    comm: &dyn Collective,
    stop: &AtomicBool,
) -> Result<Option<ImageSummary>, JobError> {
    cfg.validate()?;
    let t0 = Instant::now();
    let lead = comm.rank() == 0;
    let device = cfg.burn_device()?;
    std::fs::create_dir_all(out).map_err(|e| dir_err(out, e))?;
    let prepared = if lead {
        prepare(cfg, &device, obs)
    } else {
        Ok(Models {
            base: ConvGenerator::new(&device),
            encoder: RewardModel::new(&device),
            base_path: String::new(),
            reward_path: String::new(),
        })
    };
    let mut ok = [u8::from(prepared.is_ok())];
    comm.broadcast(&mut ok, 0)?;
    let Models { base, encoder, base_path, reward_path } = match prepared {
        Ok(m) if ok[0] == 1 => m,
        Err(e) => return Err(e),
        Ok(_) => return Err(JobError::PeerFailed),
    };
    let bcast = |e: Box<dyn std::error::Error>| crate::align::AlignError::Broadcast(e.to_string());
    let base = crate::sync::broadcast_module(base, comm).map_err(bcast)?;
    let encoder = crate::sync::broadcast_module(encoder, comm).map_err(bcast)?;
    let pretrain_s = t0.elapsed().as_secs_f64();
    if lead {
        std::fs::write(out.join("config.json"), serde_json::to_string_pretty(cfg).expect("config serialises"))
            .map_err(|e| dir_err(&out.join("config.json"), e))?;
    }

    let per_class = cfg.eval.samples / CLASSES.len();
    let reward = cfg.image.reward;
    let eval = |g: &ConvGenerator| align::evaluate(g, &encoder, reward, cfg.seed, per_class, &device);
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
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = if lead {
        let mut f = std::fs::File::create(&metrics_path).map_err(|e| dir_err(&metrics_path, e))?;
        let rec = ImageRecord {
            step: 0,
            loss: f64::NAN,
            train_reward: f64::NAN,
            grad_norm: f64::NAN,
            eval: base_eval,
            wall_s: t0.elapsed().as_secs_f64(),
        };
        writeln!(f, "{}", serde_json::to_string(&rec).expect("record")).map_err(|e| dir_err(&metrics_path, e))?;
        Some((f, vec![rec]))
    } else {
        None
    };
    let mut timings = Timings::default();
    let mut steps_done = 0;
    obs.phase("align", cfg.steps);
    for step in 0..cfg.steps {
        let stats = aligner.step(step)?;
        timings.add(&stats.timings);
        steps_done = step + 1;
        obs.progress(steps_done, stats.loss);
        if cfg.fav.check_every > 0 && (steps_done % cfg.fav.check_every == 0 || steps_done == cfg.steps) {
            crate::sync::check_in_sync(&aligner.net, comm, steps_done).map_err(JobError::Diverged)?;
        }
        let stopping = crate::sync::any_rank(stop.load(Ordering::Relaxed), comm)?;
        if let Some((f, recs)) = metrics.as_mut() {
            if steps_done % cfg.eval.every == 0 || steps_done == cfg.steps || stopping {
                let (e, _) = eval(&aligner.plain());
                let rec = ImageRecord {
                    step: steps_done,
                    loss: stats.loss,
                    train_reward: stats.reward,
                    grad_norm: stats.grad_norm,
                    eval: e,
                    wall_s: t0.elapsed().as_secs_f64(),
                };
                writeln!(f, "{}", serde_json::to_string(&rec).expect("record"))
                    .and_then(|_| f.flush())
                    .map_err(|e| dir_err(&metrics_path, e))?;
                obs.eval(
                    e.reward_mean,
                    &format!(
                        "step {:>6}  reward {:.4}  diversity {:.4}  loss {:.3e}",
                        steps_done, e.reward_mean, e.diversity, stats.loss
                    ),
                );
                recs.push(rec);
            }
        }
        if stopping {
            tracing::warn!(step = steps_done, "stopped on request (image runs do not checkpoint yet)");
            break;
        }
    }
    let align_s = t_align.elapsed().as_secs_f64();
    let Some((_, records)) = metrics else { return Ok(None) };

    let aligned = aligner.plain();
    let (final_eval, final_px) = eval(&aligned);
    let merged = aligned.merged();
    io::save(&merged, &out.join("model.safetensors"))?;
    crate::lora::save_tensors(&aligned.lora_tensors(), &out.join("lora.safetensors"))
        .map_err(|e| dir_err(&out.join("lora.safetensors"), e))?;
    side_by_side(&base_px, &final_px, per_class, &out.join("samples.png"))
        .map_err(|e| dir_err(&out.join("samples.png"), e))?;
    let series = |f: fn(&ImageRecord) -> f64| -> Vec<(f64, f64)> {
        records.iter().map(|r| (r.step as f64, f(r))).filter(|p| p.1.is_finite()).collect()
    };
    plot::curves(
        &[
            ("LOSS", series(|r| r.loss)),
            ("REWARD", series(|r| r.eval.reward_mean)),
            ("DIVERSITY", series(|r| r.eval.diversity)),
            ("GRAD NORM", series(|r| r.grad_norm)),
        ],
        &out.join("curves.png"),
    )
    .map_err(|e| dir_err(&out.join("curves.png"), e))?;
    let n = steps_done.max(1) as f64;
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
        base: base_eval,
        final_: final_eval,
        best_of_n,
        steps: steps_done,
        seed: cfg.seed,
        world_size: comm.size(),
        wall_s: t0.elapsed().as_secs_f64(),
        pretrain_s,
        align_s,
        step_time,
        base_checkpoint: base_path,
        reward_checkpoint: reward_path,
    };
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary).expect("summary"))
        .map_err(|e| dir_err(&out.join("summary.json"), e))?;
    Ok(Some(summary))
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
