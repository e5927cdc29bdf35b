//! The image job (`task = "image"`): class-conditional 32×32 images of the procedural dataset;
//! the base generator of a registered family and the learned reward model (loaded by name,
//! cached, or trained now); LoRA adapters aligned with FAV (or the DRaFT baseline) to a named
//! reward; and the run directory: `metrics.jsonl` (one object per evaluation), `summary.json`
//! (base, best-of-N, final: reward, diversity; the mean step-time breakdown), `samples.png` (per
//! class: base | aligned on the same seeds), `curves.png`, `model.safetensors` (adapters merged,
//! plain module-path names) and `lora.safetensors` (PEFT names).

pub mod eval;
pub mod report;

use super::{Evaluation, Report, RunInfo, Task};
use crate::checkpoint::{ExportSpec, Resumed};
use crate::config::{err, Config, ConfigError, Method, RewardGrad};
use crate::data::shapes::{CLASSES, PIXELS, SIZE};
use crate::data::Condition;
use crate::error::{dir_err, JobError};
use crate::lora::{self, LoraConfig, Targets};
use crate::models::{Family, FamilyVisitor};
use crate::noise::{self, Stream};
use crate::observe::{pretraining, Observer};
use crate::rewards::learned::{self, RewardModel};
use crate::rewards::{self, ImageReward};
use crate::step::{Aligner, Layout, Objective, Reference, Settings, StepStats, Timings, Trainer};
use crate::{plot, weights};
use burn::tensor::Device;
use bytes::Bytes;
use eval::{ImageEval, Judge};
use fav_comm::Collective;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// The image task, for any image family.
pub(super) struct Image;

impl super::Maker for Image {
    fn make<'c, F: Family>(cfg: &Config, device: &Device) -> Box<dyn Task<'c> + 'c> {
        Box::new(ImageTask::<F> {
            cfg: cfg.clone(),
            device: device.clone(),
            base: None,
            encoder: None,
            base_path: String::new(),
            reward_path: String::new(),
            reward: None,
            aligner: None,
            baseline: None,
            frozen: None,
        })
    }
}

/// Refuse an image config the registries know to be wrong: an unknown reward, a black-box
/// reward without NES, DRaFT without a gradient, adapter targets the family does not have.
pub(super) fn check(cfg: &Config) -> Result<(), ConfigError> {
    let i = &cfg.image;
    let maker = rewards::image_maker(&i.reward).ok_or_else(|| {
        err(
            "image.reward",
            format!("unknown name {:?}; expected one of {}", i.reward, rewards::image_names().join(", ")),
        )
    })?;
    // The files of a published reward and the server's address, without loading anything.
    match maker {
        rewards::Maker::Published(kind) => {
            if cfg.reward.model.is_empty() {
                return Err(err("reward.model", format!("{:?} needs the published model's files", i.reward)));
            }
            let src = rewards::published_source(kind, &cfg.reward, prompts(), [SIZE, SIZE]);
            rewards::clip::score::check(&src).map_err(|e| err("reward.model", e.to_string()))?;
        }
        rewards::Maker::Server => {
            rewards::server::Server::new(cfg.reward.server.clone(), prompts(), [SIZE, SIZE])
                .map_err(|e| err("reward.server.url", e))?;
        }
        rewards::Maker::Own(_) => {}
    }
    let differentiable = !maker.black_box();
    if !differentiable && cfg.fav.reward_grad != RewardGrad::Nes {
        return Err(err("fav.reward_grad", format!("{:?} is black-box: it needs \"nes\"", i.reward)));
    }
    if i.method == Method::Draft && !differentiable {
        return Err(err("image.method", format!("draft backpropagates the reward: {:?} has no gradient", i.reward)));
    }
    crate::models::image::with_family(&i.family, TargetsOf(&i.lora_targets)).expect("family checked").map(|_| ())
}

/// The prompt of each class, for rewards that read one: its name.
pub fn prompts() -> Vec<String> {
    CLASSES.iter().map(|c| c.to_string()).collect()
}

/// Resolves `image.lora_targets` against a family's layers.
struct TargetsOf<'a>(&'a [String]);

impl FamilyVisitor for TargetsOf<'_> {
    type Output = Result<Targets, ConfigError>;
    fn visit<F: Family>(self) -> Self::Output {
        let fresh = F::init(&Config::default(), &Device::flex());
        Targets::parse(self.0, &lora::layers(&fresh)).map_err(|e| err("image.lora_targets", e))
    }
}

/// §6.2: the classes of `step` — round-robin over a permutation of all classes, a new
/// permutation each time the round restarts, drawn from the run seed. A pure function of
/// `(seed, step)`, so a resumed run visits the same classes.
pub fn classes_of_step(seed: u64, step: usize, c: usize) -> Vec<usize> {
    super::chunk_of_step(seed, step, c, CLASSES.len())
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// `summary.json` of an image run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageSummary {
    pub task: String,
    pub reward: String,
    pub method: Method,
    pub family: String,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BestOf {
    pub n: usize,
    #[serde(flatten)]
    pub eval: ImageEval,
}

/// Rank 0's scores of the base.
struct Baseline {
    eval: ImageEval,
    pixels: Vec<f32>,
    best_of_n: Vec<BestOf>,
}

struct ImageTask<'c, F: Family> {
    cfg: Config,
    device: Device,
    base: Option<F>,
    encoder: Option<RewardModel>,
    base_path: String,
    reward_path: String,
    reward: Option<ImageReward>,
    aligner: Option<Aligner<'c, F>>,
    baseline: Option<Baseline>,
    /// Rank 0: the frozen models as checkpoint parts (a resume needs neither cache nor names).
    frozen: Option<(Bytes, Bytes)>,
}

impl<F: Family> ImageTask<'_, F> {
    fn aligner(&self) -> &Aligner<'_, F> {
        self.aligner.as_ref().expect("started")
    }

    fn judge(&self) -> Judge<'_> {
        Judge {
            reward: self.reward.as_ref().expect("started"),
            encoder: self.encoder.as_ref().expect("started"),
            seed: self.cfg.seed,
            per_class: self.cfg.eval.samples / CLASSES.len(),
            sample_steps: self.cfg.image.sample_steps,
            device: self.device.clone(),
        }
    }

    fn lora(&self) -> LoraConfig {
        let i = &self.cfg.image;
        LoraConfig { rank: i.lora_rank, alpha: i.lora_alpha, init: i.lora_init }
    }

    fn targets(&self) -> Targets {
        Targets::parse(&self.cfg.image.lora_targets, &lora::layers(self.base.as_ref().expect("prepared")))
            .expect("validated: the targets name the family's layers")
    }
}

impl<'c, F: Family> Task<'c> for ImageTask<'c, F> {
    fn prepare(
        &mut self,
        resumed: Option<&Resumed>,
        obs: &mut dyn Observer,
        stop: &AtomicBool,
    ) -> Result<(), JobError> {
        let cfg = &self.cfg;
        let (fresh, fresh_encoder) = (F::init(cfg, &self.device), RewardModel::new(&self.device));
        if let Some(r) = resumed {
            let from = format!("checkpoint step {}", r.state.step);
            self.base = Some(super::from_part(fresh, r, "base.safetensors")?);
            self.encoder = Some(super::from_part(fresh_encoder, r, "reward_model.safetensors")?);
            (self.base_path, self.reward_path) = (from.clone(), from);
            return Ok(());
        }
        let i = &cfg.image;
        let key = serde_json::json!({ "v": 1, "kind": "reward-model", "seed": i.pretrain_seed, "steps": i.reward_steps, "batch": i.reward_batch });
        let (encoder, reward_path) = super::load_or_train(
            fresh_encoder,
            &i.reward_model,
            super::cache_path(cfg, "reward-model", &key),
            "reward model",
            || {
                tracing::info!(steps = i.reward_steps, "training the reward model");
                let mut progress = pretraining(obs, stop, "reward model", i.reward_steps);
                let trained =
                    learned::train(i.pretrain_seed, i.reward_steps, i.reward_batch, &self.device, &mut progress)?;
                Ok(trained.map(|(m, fit)| {
                    tracing::info!(accuracy = fit.accuracy, r2 = fit.r2, "reward model on held-out images");
                    m
                }))
            },
        )?;
        let (base, base_path) = super::load_or_train(
            fresh,
            &i.base,
            super::cache_path(cfg, F::NAME, &F::cache_key(cfg)),
            "base generator",
            || {
                let mut progress = pretraining(obs, stop, "pretrain", F::pretrain_steps(cfg));
                F::pretrain(cfg, &self.device, &mut progress)
            },
        )?;
        (self.base, self.encoder, self.base_path, self.reward_path) =
            (Some(base), Some(encoder), base_path, reward_path);
        Ok(())
    }

    fn start(&mut self, comm: &'c dyn Collective) -> Result<(), JobError> {
        let cfg = self.cfg.clone();
        let (f, i) = (&cfg.fav, &cfg.image);
        let base = self.base.take().unwrap_or_else(|| F::init(&cfg, &self.device));
        let encoder = self.encoder.take().unwrap_or_else(|| RewardModel::new(&self.device));
        let base = super::share(base, "base generator", comm)?;
        let encoder = super::share(encoder, "reward model", comm)?;
        if comm.rank() == 0 {
            self.frozen = Some((super::part_bytes(&base)?, super::part_bytes(&encoder)?));
        }
        let inputs = rewards::Inputs {
            learned: &encoder,
            cfg: &cfg.reward,
            prompts: prompts(),
            image: [SIZE, SIZE],
            device: &self.device,
        };
        let reward =
            rewards::image(&i.reward, &inputs).expect("validated: a registered reward").map_err(JobError::Reward)?;
        self.base = Some(base.clone());
        let layout = Layout::new(f.batch, f.conditions, comm.size(), comm.rank()).map_err(JobError::Layout)?;
        // Adapter initialisation draws from the device generator, seeded from the run seed.
        let ad = self.device.clone().autodiff();
        let seed = rand::Rng::random(&mut noise::rng(cfg.seed, Stream::Init, 13));
        let net = lora::adapt(base.clone().to_device(&ad), self.lora(), &self.targets(), seed, &self.device).train();
        let objective = match i.method {
            Method::Fav => Objective::Fav,
            Method::Draft => {
                Objective::Draft { multiplier: i.draft_multiplier, grad_steps: (i.draft_k > 0).then_some(i.draft_k) }
            }
        };
        let settings = Settings::new(&cfg, objective, i.sample_steps);
        let (seed, c) = (cfg.seed, f.conditions);
        let schedule = move |step| classes_of_step(seed, step, c).into_iter().map(Condition::Class).collect();
        self.aligner = Some(Aligner {
            net,
            reference: Reference::Model(base),
            features: reward.features.clone(),
            reward: reward.reward.clone(),
            schedule: Box::new(schedule),
            optim: crate::step::adamw(i.weight_decay),
            s: settings,
            layout,
            device: self.device.clone(),
            comm,
            skipped: 0,
        });
        self.encoder = Some(encoder);
        self.reward = Some(reward);
        Ok(())
    }

    fn baseline(&mut self) -> Result<Vec<String>, JobError> {
        let base = self.base.as_ref().expect("started");
        let judge = self.judge();
        let scored = judge.evaluate(base).and_then(|e| Ok((e, judge.best_of_n(base, &self.cfg.image.best_of)?)));
        let ((eval, pixels), best) = scored.map_err(JobError::device("evaluating the base model"))?;
        let best_of_n = best.into_iter().map(|(n, eval)| BestOf { n, eval }).collect();
        tracing::info!(reward = eval.reward_mean, diversity = eval.diversity, "base generator");
        let rec =
            ImageRecord { step: 0, loss: f64::NAN, train_reward: f64::NAN, grad_norm: f64::NAN, eval, wall_s: 0.0 };
        self.baseline = Some(Baseline { eval, pixels, best_of_n });
        Ok(vec![serde_json::to_string(&rec).expect("record serialises")])
    }

    fn trainer(&mut self) -> &mut dyn Trainer {
        self.aligner.as_mut().expect("started")
    }

    fn evaluate(&mut self, step: usize, stats: &StepStats, wall_s: f64) -> Result<Evaluation, JobError> {
        let (e, _) = self
            .judge()
            .evaluate(&self.aligner().plain())
            .map_err(JobError::device(format!("evaluating at step {step}")))?;
        let rec = ImageRecord {
            step,
            loss: stats.loss,
            train_reward: stats.reward,
            grad_norm: stats.grad_norm,
            eval: e,
            wall_s,
        };
        Ok(Evaluation {
            line: serde_json::to_string(&rec).expect("record serialises"),
            display: format!(
                "step {:>6}  reward {:.4}  diversity {:.4}  loss {:.3e}",
                step, e.reward_mean, e.diversity, stats.loss
            ),
            reward: e.reward_mean,
            finite: [e.reward_mean, e.reward_std, e.diversity].iter().all(|v| v.is_finite()),
        })
    }

    fn checkpoint_parts(&mut self) -> Result<Vec<(String, Bytes)>, JobError> {
        let i = &self.cfg.image;
        let (base, reward) = self.frozen.clone().expect("rank 0 keeps the frozen models");
        let aligned = self.aligner().plain();
        let peft = lora::peft_tensors(&aligned).map_err(JobError::device("reading the LoRA adapters"))?;
        let adapters = lora::tensors_bytes(&peft)
            .map_err(|e| JobError::Checkpoint(crate::checkpoint::CheckpointError::Format(e)))?;
        let method = format!("{:?}", i.method).to_lowercase();
        let reward_text = match i.reward.as_str() {
            "learned" => "learned score head on the reward encoder's embedding".to_string(),
            "jpeg_compress" => "JPEG compressibility (−kB at quality 95, spec §9)".to_string(),
            "jpeg_incompress" => "JPEG incompressibility (+kB at quality 95, spec §9)".to_string(),
            other => other.to_string(),
        };
        let export = ExportSpec {
            files: vec!["model.safetensors".into(), "lora.safetensors".into()],
            model: serde_json::json!({
                "family": i.family,
                "sample_steps": i.sample_steps,
                "weights": "model.safetensors (adapters merged)",
                "lora": {
                    "weights": "lora.safetensors",
                    "r": i.lora_rank,
                    "lora_alpha": i.lora_alpha,
                    "target_modules": self.targets().0,
                },
            }),
            reward: format!("{reward_text}; method {method}"),
        };
        Ok(vec![
            ("base.safetensors".to_string(), base),
            ("reward_model.safetensors".to_string(), reward),
            ("model.safetensors".to_string(), super::part_bytes(&lora::merged(&aligned))?),
            ("lora.safetensors".to_string(), Bytes::from(adapters)),
            export.part(),
        ])
    }

    fn finish(&mut self, out: &Path, metrics: &[String], run: &RunInfo) -> Result<Report, JobError> {
        let aligned = self.aligner().plain();
        let (final_eval, final_px) =
            self.judge().evaluate(&aligned).map_err(JobError::device("evaluating the aligned model"))?;
        weights::save(&lora::merged(&aligned), &out.join("model.safetensors"))?;
        let lora_path = out.join("lora.safetensors");
        let peft = lora::peft_tensors(&aligned).map_err(JobError::device("reading the LoRA adapters"))?;
        lora::tensors_bytes(&peft)
            .and_then(|b| weights::write_atomic(&lora_path, &b).map_err(|e| e.to_string()))
            .map_err(|e| dir_err(&lora_path, e))?;
        let b = self.baseline.as_ref().expect("baseline first");
        let per_class = self.cfg.eval.samples / CLASSES.len();
        let png = out.join("samples.png");
        side_by_side(&b.pixels, &final_px, per_class, &png).map_err(|e| dir_err(&png, e))?;
        let panels =
            [("LOSS", "loss"), ("REWARD", "reward_mean"), ("DIVERSITY", "diversity"), ("GRAD NORM", "grad_norm")];
        super::curves(metrics, &panels, &out.join("curves.png"))?;
        let i = &self.cfg.image;
        let summary = ImageSummary {
            task: "image".into(),
            reward: i.reward.clone(),
            method: i.method,
            family: i.family.clone(),
            sample_steps: i.sample_steps,
            base: b.eval,
            final_: final_eval,
            best_of_n: b.best_of_n.clone(),
            steps: run.steps,
            seed: self.cfg.seed,
            world_size: run.world_size,
            wall_s: run.wall_s,
            pretrain_s: run.pretrain_s,
            align_s: run.align_s,
            step_time: run.step_time,
            base_checkpoint: self.base_path.clone(),
            reward_checkpoint: self.reward_path.clone(),
            resumed_from: run.resumed_from,
        };
        let best = b.best_of_n.iter().map(|b| format!("N={} {:.4}", b.n, b.eval.reward_mean)).collect::<Vec<_>>();
        let text = format!(
            "base  : reward {:.4}  diversity {:.4}\nfinal : reward {:.4}  diversity {:.4}\nbest-of-N (base): {}\n\
             {} steps in {:.1}s (pretrain {:.1}s, align {:.1}s) -> {}",
            b.eval.reward_mean,
            b.eval.diversity,
            final_eval.reward_mean,
            final_eval.diversity,
            best.join(", "),
            run.steps,
            run.wall_s,
            run.pretrain_s,
            run.align_s,
            out.display()
        );
        Ok(Report { summary: serde_json::to_value(&summary).expect("summary serialises"), text })
    }
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
