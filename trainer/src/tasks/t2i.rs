//! The text-to-image job (`task = "t2i"`, spec §6, §7.1, §11.1): SANA-Sprint from a diffusers
//! folder, prompts from two files (train, eval) with their embeddings from a third; C training
//! prompts per step, K particles each, seeded as §6.3 so any world size gives the same weights;
//! particles are the features of a published reward model (or a reward server's pixels); the
//! reference is the frozen base on its own seeds. Every rank reads the files itself (paths on
//! every rank's filesystem, as for the reward models): nothing of gigabytes is broadcast.
//!
//! The run directory: `metrics.jsonl` (per evaluation: mean/std/min/max reward over the eval
//! prompts and the within-prompt feature diversity), `summary.json`, `samples/prompt_NNN.png`
//! (per eval prompt: the base's samples above the aligned model's, same seeds), `curves.png`,
//! `pytorch_lora_weights.safetensors` (diffusers' LoRA layout, `load_lora_weights` takes it) —
//! and `fav export` adds the merged transformer as a diffusers folder.

use super::{Evaluation, Report, RunInfo, Task};
use crate::checkpoint::{ExportSpec, Resumed};
use crate::config::{err, Config, ConfigError, RewardGrad};
use crate::data::Condition;
use crate::error::{dir_err, JobError};
use crate::lora::{self, LoraConfig, Targets};
use crate::models::sana::{self, SanaSprint};
use crate::models::Generator;
use crate::noise::{self, Stream};
use crate::observe::Observer;
use crate::rewards::{self, ImageReward};
use crate::step::{Aligner, Layout, Objective, Reference, Settings, StepStats};
use crate::tensors::{matrix, read, DeviceError};
use burn::module::Module;
use burn::tensor::Device;
use bytes::Bytes;
use fav_comm::Collective;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The LoRA file name diffusers' `load_lora_weights(folder)` looks for.
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";

pub(super) fn make<'c>(cfg: &Config, device: &Device) -> Box<dyn Task<'c> + 'c> {
    Box::new(T2iTask { cfg: cfg.clone(), device: device.clone(), ..T2iTask::default() })
}

/// The lines of a prompt file (blank lines skipped), refused when unreadable or empty.
pub fn read_prompts(path: &str, key: &str) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(key, format!("{path}: {e}")))?;
    let prompts: Vec<String> =
        text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).map(String::from).collect();
    if prompts.is_empty() {
        return Err(err(key, format!("{path}: no prompts (one per line)")));
    }
    Ok(prompts)
}

/// The training prompts then the evaluation prompts (the embeddings file's order), and how many
/// train.
pub fn prompts(cfg: &Config) -> Result<(Vec<String>, usize), ConfigError> {
    let mut all = read_prompts(&cfg.t2i.train_prompts, "t2i.train_prompts")?;
    let n_train = all.len();
    all.extend(read_prompts(&cfg.t2i.eval_prompts, "t2i.eval_prompts")?);
    Ok((all, n_train))
}

/// The latent `[C, h, w]` and image `[H, W]` of the model folder, from its configs alone.
pub fn shapes(dir: &Path) -> Result<([usize; 3], [usize; 2]), String> {
    let read = |name: &str| {
        let p = sana::component_dir(dir, name).join("config.json");
        std::fs::read_to_string(&p).map(|t| (t, p.clone())).map_err(|e| format!("{}: {e}", p.display()))
    };
    let (t, p) = read("transformer")?;
    let c = sana::TransformerConfig::parse(&t).map_err(|e| format!("{}: {e}", p.display()))?;
    let (a, p) = read("vae")?;
    let ae = sana::dc_ae::DecoderConfig::parse(&a).map_err(|e| format!("{}: {e}", p.display()))?;
    let side = c.sample_size << (ae.levels.len() - 1);
    Ok(([c.in_channels, c.sample_size, c.sample_size], [side, side]))
}

/// Refuse a t2i config whose files or reward cannot work: unreadable prompt files, embeddings
/// for another prompt set or model, more prompts per step than training prompts, a reward that
/// is not a published model or a server, a black-box reward without NES.
pub(super) fn check(cfg: &Config) -> Result<(), ConfigError> {
    let t = &cfg.t2i;
    let (all, n_train) = prompts(cfg)?;
    if cfg.fav.conditions > n_train {
        return Err(err(
            "fav.conditions",
            format!("{} prompts per step but only {n_train} training prompts", cfg.fav.conditions),
        ));
    }
    let (_, image) = shapes(Path::new(&t.model)).map_err(|e| err("t2i.model", e))?;
    let maker = rewards::image_maker(&t.reward).filter(|m| !matches!(m, rewards::Maker::Own(_))).ok_or_else(|| {
        err("t2i.reward", format!("{:?}: expected a published reward ({}) or \"server\"", t.reward, published_names()))
    })?;
    match maker {
        rewards::Maker::Published(kind) => {
            if cfg.reward.model.is_empty() {
                return Err(err("reward.model", format!("{:?} needs the published model's files", t.reward)));
            }
            let src = rewards::published_source(kind, &cfg.reward, all.clone(), image);
            rewards::clip::score::check(&src).map_err(|e| err("reward.model", e.to_string()))?;
        }
        rewards::Maker::Server => {
            rewards::server::Server::new(cfg.reward.server.clone(), all.clone(), image)
                .map_err(|e| err("reward.server.url", e))?;
        }
        rewards::Maker::Own(_) => unreachable!("filtered"),
    }
    if maker.black_box() && cfg.fav.reward_grad != RewardGrad::Nes {
        return Err(err("fav.reward_grad", format!("{:?} is black-box: it needs \"nes\"", t.reward)));
    }
    let caption = {
        let p = sana::component_dir(Path::new(&t.model), "transformer").join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| err("t2i.model", format!("{}: {e}", p.display())))?;
        sana::TransformerConfig::parse(&text)
            .map_err(|e| err("t2i.model", format!("{}: {e}", p.display())))?
            .caption_channels
    };
    let emb = sana::prompts::PromptEmbeddings::read(Path::new(&t.embeddings), caption)
        .map_err(|e| err("t2i.embeddings", e))?;
    emb.check_prompts(&all)
        .map_err(|e| err("t2i.embeddings", format!("{}: {e} (train then eval prompts)", t.embeddings)))
}

fn published_names() -> String {
    rewards::image_names()
        .into_iter()
        .filter(|n| matches!(rewards::image_maker(n), Some(rewards::Maker::Published(_))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// §6.2: the training prompts of `step` — round-robin over a permutation of the `n` training
/// prompts, a new permutation each round, drawn from the run seed. A pure function of
/// `(seed, step)`, so a resumed run visits the same prompts.
pub fn prompts_of_step(seed: u64, step: usize, c: usize, n: usize) -> Vec<usize> {
    super::chunk_of_step(seed, step, c, n)
}

/// Reward and diversity over the evaluation prompts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct T2iEval {
    pub reward_mean: f64,
    pub reward_std: f64,
    pub reward_min: f64,
    pub reward_max: f64,
    /// Mean pairwise Euclidean distance of the reward features within a prompt, averaged over
    /// the eval prompts: how much alignment narrows what a prompt gives.
    pub diversity: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct T2iRecord {
    pub step: usize,
    pub loss: f64,
    pub train_reward: f64,
    pub grad_norm: f64,
    #[serde(flatten)]
    pub eval: T2iEval,
    pub wall_s: f64,
}

#[derive(Default)]
struct T2iTask<'c> {
    cfg: Config,
    device: Device,
    /// Train then eval prompts, and how many train.
    prompts: Vec<String>,
    n_train: usize,
    base: Option<SanaSprint>,
    reward: Option<ImageReward>,
    aligner: Option<Aligner<'c, SanaSprint>>,
    /// The base's evaluation and its grid samples (the first `t2i.grid` of each eval prompt).
    baseline: Option<(T2iEval, Vec<f32>)>,
}

impl T2iTask<'_> {
    fn lora(&self) -> LoraConfig {
        let t = &self.cfg.t2i;
        LoraConfig { rank: t.lora_rank, alpha: t.lora_alpha, init: t.lora_init }
    }

    fn aligner(&self) -> &Aligner<'_, SanaSprint> {
        self.aligner.as_ref().expect("started")
    }

    /// Evaluate `model` on the eval prompts' fixed seeds (the same for every model): the numbers
    /// and the grid samples.
    fn evaluate_model(&self, model: &SanaSprint) -> Result<(T2iEval, Vec<f32>), DeviceError> {
        let t = &self.cfg.t2i;
        let reward = self.reward.as_ref().expect("started");
        let (n, dim) = (t.eval_batch, model.noise_dim());
        let chunk = t.micro_batch.max(1);
        let (mut rewards, mut grid, mut div) = (Vec::new(), Vec::new(), 0.0);
        for e in 0..self.prompts.len() - self.n_train {
            let cond = Condition::Prompt(self.n_train + e);
            let mut feats = Vec::new();
            for start in (0..n).step_by(chunk) {
                let m = chunk.min(n - start);
                let keys = (start..start + m).map(|i| ((e as u64) << 20) | i as u64);
                let z = matrix(noise::normal_rows(self.cfg.seed, Stream::Eval, keys, dim), m, dim, &self.device);
                let images = model.sample(z, cond, t.sample_steps, None);
                let f = reward.features.features(images.clone());
                rewards.extend(read(&reward.reward.value(&f, cond)?)?.into_iter().map(f64::from));
                feats.extend(read(&f)?);
                let keep = t.grid.min(n).saturating_sub(start).min(m);
                if keep > 0 {
                    let per = images.dims()[1];
                    grid.extend_from_slice(&read(&images)?[..keep * per]);
                }
            }
            div += super::mean_pairwise_distance(&feats, n);
        }
        let count = rewards.len() as f64;
        let mean = rewards.iter().sum::<f64>() / count;
        let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / count;
        let eval = T2iEval {
            reward_mean: mean,
            reward_std: var.sqrt(),
            reward_min: rewards.iter().copied().fold(f64::INFINITY, f64::min),
            reward_max: rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            diversity: div / (self.prompts.len() - self.n_train) as f64,
        };
        Ok((eval, grid))
    }

    /// The aligned transformer's adapters as diffusers' LoRA file.
    fn lora_bytes(&self) -> Result<Vec<u8>, JobError> {
        let peft = lora::peft_tensors(&self.aligner().plain().transformer)
            .map_err(JobError::device("reading the LoRA adapters"))?;
        sana::lora::diffusers_lora_bytes(peft, &self.lora())
            .map_err(|e| JobError::Checkpoint(crate::checkpoint::CheckpointError::Format(e)))
    }
}

impl<'c> Task<'c> for T2iTask<'c> {
    /// Nothing to train or cache: the base and the reward are files every rank reads in
    /// [`Task::start`]. Rank 0 reads the prompt files now, to refuse them before any rank loads.
    fn prepare(&mut self, _: Option<&Resumed>, _: &mut dyn Observer, _: &AtomicBool) -> Result<(), JobError> {
        prompts(&self.cfg)?;
        Ok(())
    }

    fn start(&mut self, comm: &'c dyn Collective) -> Result<(), JobError> {
        let cfg = self.cfg.clone();
        let (f, t) = (&cfg.fav, &cfg.t2i);
        (self.prompts, self.n_train) = prompts(&cfg)?;
        let mut base = SanaSprint::load(Path::new(&t.model), Path::new(&t.embeddings), t.guidance, &self.device)
            .map_err(|e| JobError::Config(err("t2i.model", e)))?;
        if cfg.t2i_bf16() {
            base.transformer = base.transformer.into_bf16();
        }
        base.setup
            .prompts
            .check_prompts(&self.prompts)
            .map_err(|e| JobError::Config(err("t2i.embeddings", format!("{}: {e}", t.embeddings))))?;
        let maker = rewards::image_maker(&t.reward).expect("validated: a registered reward");
        let image = base.setup.image;
        let reward = match maker {
            rewards::Maker::Published(kind) => rewards::clip::score::build(
                &rewards::published_source(kind, &cfg.reward, self.prompts.clone(), image),
                &self.device,
            )
            .map_err(|e| e.to_string()),
            rewards::Maker::Server => {
                rewards::server::Server::new(cfg.reward.server.clone(), self.prompts.clone(), image)
                    .map(rewards::server::reward)
            }
            rewards::Maker::Own(_) => unreachable!("validated: a published reward or a server"),
        }
        .map_err(JobError::Reward)?;
        let layout = Layout::new(f.batch, f.conditions, comm.size(), comm.rank()).map_err(JobError::Layout)?;
        let settings = Settings::new(&cfg, Objective::Fav, t.sample_steps);
        let ad = self.device.clone().autodiff();
        // Adapter initialisation draws from the device generator, seeded from the run seed.
        let seed = rand::Rng::random(&mut noise::rng(cfg.seed, Stream::Init, 13));
        let targets = Targets(
            sana::lora::attention_targets(&base.transformer)
                .0
                .into_iter()
                .map(|l| format!("transformer.{l}"))
                .collect(),
        );
        let net = lora::adapt(base.clone().to_device(&ad), self.lora(), &targets, seed, &self.device).train();
        let net = net.with_recompute(t.gradient_checkpointing, t.decoder_checkpointing);
        let (seed, c, n_train) = (cfg.seed, f.conditions, self.n_train);
        let schedule = move |step| prompts_of_step(seed, step, c, n_train).into_iter().map(Condition::Prompt).collect();
        self.aligner = Some(Aligner {
            net,
            reference: Reference::Model(base.clone()),
            features: reward.features.clone(),
            reward: reward.reward.clone(),
            schedule: Box::new(schedule),
            optim: crate::step::adamw(t.weight_decay),
            s: settings,
            layout,
            device: self.device.clone(),
            comm,
            skipped: 0,
        });
        self.base = Some(base);
        self.reward = Some(reward);
        Ok(())
    }

    fn baseline(&mut self) -> Result<Vec<String>, JobError> {
        let (eval, grid) = self
            .evaluate_model(self.base.as_ref().expect("started"))
            .map_err(JobError::device("evaluating the base model"))?;
        tracing::info!(reward = eval.reward_mean, diversity = eval.diversity, "base model");
        let rec = T2iRecord { step: 0, loss: f64::NAN, train_reward: f64::NAN, grad_norm: f64::NAN, eval, wall_s: 0.0 };
        self.baseline = Some((eval, grid));
        Ok(vec![serde_json::to_string(&rec).expect("record serialises")])
    }

    fn trainer(&mut self) -> &mut dyn crate::step::Trainer {
        self.aligner.as_mut().expect("started")
    }

    fn evaluate(&mut self, step: usize, stats: &StepStats, wall_s: f64) -> Result<Evaluation, JobError> {
        let (e, _) = self
            .evaluate_model(&self.aligner().plain())
            .map_err(JobError::device(format!("evaluating at step {step}")))?;
        let rec = T2iRecord {
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
                "step {:>6}  reward {:.4} (min {:.4}, max {:.4})  diversity {:.4}  loss {:.3e}",
                step, e.reward_mean, e.reward_min, e.reward_max, e.diversity, stats.loss
            ),
            reward: e.reward_mean,
            finite: [e.reward_mean, e.reward_std, e.diversity].iter().all(|v| v.is_finite()),
        })
    }

    /// The adapters in diffusers' layout and what `fav export` makes of them; the base is the
    /// user's folder (`t2i.model`), not copied into every checkpoint.
    fn checkpoint_parts(&mut self) -> Result<Vec<(String, Bytes)>, JobError> {
        let t = &self.cfg.t2i;
        let export = ExportSpec {
            files: vec![LORA_FILE.into()],
            model: serde_json::json!({
                "family": "sana_sprint",
                "base": t.model,
                "sample_steps": t.sample_steps,
                "guidance": t.guidance,
                "lora": {
                    "weights": LORA_FILE,
                    "layout": "diffusers (SanaSprintPipeline.load_lora_weights)",
                    "r": t.lora_rank,
                    "lora_alpha": t.lora_alpha,
                    "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
                },
                "merged": "transformer/ (fav export: the adapters folded into the base's weights)",
            }),
            reward: format!("{} on {} training prompts; method fav", t.reward, self.n_train),
        };
        Ok(vec![(LORA_FILE.to_string(), Bytes::from(self.lora_bytes()?)), export.part()])
    }

    fn finish(&mut self, out: &Path, metrics: &[String], run: &RunInfo) -> Result<Report, JobError> {
        let aligned = self.aligner().plain();
        let (final_eval, final_grid) =
            self.evaluate_model(&aligned).map_err(JobError::device("evaluating the aligned model"))?;
        let lora_path = out.join(LORA_FILE);
        crate::weights::write_atomic(&lora_path, &self.lora_bytes()?).map_err(|e| dir_err(&lora_path, e))?;
        let (base_eval, base_grid) = self.baseline.clone().expect("baseline first");
        let grids = out.join("samples");
        std::fs::create_dir_all(&grids).map_err(|e| dir_err(&grids, e))?;
        let t = &self.cfg.t2i;
        let [h, w] = aligned.setup.image;
        let cols = t.grid.min(t.eval_batch);
        let per = cols * 3 * h * w;
        for e in 0..self.prompts.len() - self.n_train {
            let png = grids.join(format!("prompt_{e:03}.png"));
            let px = [&base_grid[e * per..(e + 1) * per], &final_grid[e * per..(e + 1) * per]].concat();
            // Small images drawn large enough to see (a 1024² one as is).
            let zoom = (128 / h).max(1) as u32;
            crate::plot::image_grid(&px, h, cols, zoom, &png).map_err(|m| dir_err(&png, m))?;
        }
        let prompts_txt = grids.join("prompts.txt");
        let listing: String =
            self.prompts[self.n_train..].iter().enumerate().map(|(e, p)| format!("prompt_{e:03}.png\t{p}\n")).collect();
        std::fs::write(&prompts_txt, listing).map_err(|e| dir_err(&prompts_txt, e))?;
        let panels =
            [("LOSS", "loss"), ("REWARD", "reward_mean"), ("DIVERSITY", "diversity"), ("GRAD NORM", "grad_norm")];
        super::curves(metrics, &panels, &out.join("curves.png"))?;
        let summary = serde_json::json!({
            "task": "t2i",
            "reward": t.reward,
            "model": t.model,
            "sample_steps": t.sample_steps,
            "train_prompts": self.n_train,
            "eval_prompts": self.prompts.len() - self.n_train,
            "base": base_eval,
            "final": final_eval,
            "steps": run.steps,
            "seed": self.cfg.seed,
            "world_size": run.world_size,
            "wall_s": run.wall_s,
            "align_s": run.align_s,
            "step_time": run.step_time,
            "resumed_from": run.resumed_from,
        });
        let text = format!(
            "base  : reward {:.4} ± {:.4}  diversity {:.4}\nfinal : reward {:.4} ± {:.4}  diversity {:.4}\n\
             {} steps in {:.1}s -> {} (LoRA: {LORA_FILE}; samples/: base above aligned)",
            base_eval.reward_mean,
            base_eval.reward_std,
            base_eval.diversity,
            final_eval.reward_mean,
            final_eval.reward_std,
            final_eval.diversity,
            run.steps,
            run.wall_s,
            out.display()
        );
        Ok(Report { summary, text })
    }
}

/// The merged transformer of a checkpoint's LoRA (`fav export`): the base of `model_dir` with
/// the adapters folded in, written as a diffusers folder `out/transformer` (`config.json` and
/// `diffusion_pytorch_model.safetensors`, float32, diffusers' names and layouts).
pub fn export_merged(model_dir: &Path, lora_file: &Path, out: &Path) -> Result<PathBuf, String> {
    let (base, _) = sana::load_transformer(model_dir, &Device::flex()).map_err(|e| e.to_string())?;
    let merged = sana::lora::merge_diffusers_lora(base, lora_file).map_err(|e| e.to_string())?;
    let dir = out.join("transformer");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = sana::component_dir(model_dir, "transformer").join("config.json");
    std::fs::copy(&src, dir.join("config.json")).map_err(|e| format!("{}: {e}", src.display()))?;
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = sana::diffusers_transformer_bytes(&merged)?;
    crate::weights::write_atomic(&file, &bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(dir)
}
