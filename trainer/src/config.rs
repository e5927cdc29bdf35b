//! The job configuration: every key, its default (the embedded toy-VAE job) and its checks.
//! Parsing TOML and `--set` overrides is the launcher's job; this is the typed result.
//!
//! Configuration knows names and checks values; it imports no model or reward. The registries
//! (`models::toy`, `models::image`, `rewards::image`) check the names of families and rewards
//! ([`crate::validate`]).

use crate::svgd::{FieldConfig, KdeClamp, Repulsion};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `toy` (8 gaussians, the `model` families) or `image` (the `image` section).
    pub task: Task,
    /// Run seed: initialisation, data, pretraining and particle noise all derive from it.
    pub seed: u64,
    /// Alignment (FAV) steps.
    pub steps: usize,
    /// `cpu` (default), or `cuda` / `cuda:N` in a build with the `cuda` feature.
    pub device: DeviceKind,
    /// Collective for multi-rank runs: `auto` (NCCL for a CUDA device in a build with `nccl`,
    /// MPI otherwise), `mpi` or `nccl`.
    pub comm: CommKind,
    pub model: ModelConfig,
    pub pretrain: PretrainConfig,
    pub fav: FavConfig,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
    pub image: ImageConfig,
    /// The text-to-image job (`task = "t2i"`): SANA-Sprint from a diffusers folder.
    pub t2i: T2iConfig,
    /// The files of a published reward model, or the reward server (`image.reward` or
    /// `t2i.reward` names which).
    pub reward: RewardConfig,
}

/// A published reward model's files (nothing is fetched: paths on every rank's filesystem) and
/// the reward server, for the rewards `image.reward` names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// A model directory (transformers; the hub's open_clip layout) or checkpoint file.
    pub model: String,
    /// The model config of a checkpoint file (open_clip's model JSON, e.g. ViT-H-14.json).
    pub model_config: String,
    /// The aesthetic reward's head (LAION's `.pth`).
    pub head: String,
    /// HPSv2: score against the prompt as given, not "a photo of a …" (spec §7.1).
    pub raw_prompts: bool,
    pub server: ServerConfig,
}

/// Where a reward server is and how patiently to ask it (`rewards::server`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `http://host:port/path` (https works too).
    pub url: String,
    /// Seconds one request may take, connecting included.
    pub timeout_s: f64,
    /// Further attempts after a failed one (0.5 s, 1 s, 2 s, … apart).
    pub retries: usize,
    /// Images per request.
    pub max_batch: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { url: String::new(), timeout_s: 60.0, retries: 3, max_batch: 64 }
    }
}

/// Where tensors live: `cpu`, or `cuda` / `cuda:N`, parsed once from the config's string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceKind {
    Cpu,
    /// `cuda` (`None`: the device the launcher assigns this rank) or `cuda:N`.
    Cuda(Option<usize>),
}

impl DeviceKind {
    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceKind::Cuda(_))
    }

    /// The GPU of a rank whose launcher assigned it `local`: the one `cuda:N` names, else
    /// `local`; `None` on the CPU.
    pub fn gpu(self, local: usize) -> Option<usize> {
        match self {
            DeviceKind::Cpu => None,
            DeviceKind::Cuda(named) => Some(named.unwrap_or(local)),
        }
    }
}

impl TryFrom<String> for DeviceKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => Ok(Self::Cuda(Some(i))),
                None => Err(format!("expected \"cpu\", \"cuda\" or \"cuda:N\", got {s:?}")),
            },
        }
    }
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> String {
        match d {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Cuda(None) => "cuda".into(),
            DeviceKind::Cuda(Some(i)) => format!("cuda:{i}"),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

/// The collective of a multi-rank run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommKind {
    /// NCCL for a CUDA device in a build with `nccl`, MPI otherwise.
    Auto,
    Mpi,
    Nccl,
}

/// Which job a config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The 8-gaussians benchmark (spec §10).
    Toy,
    /// Class-conditional 32×32 images (the procedural shapes dataset) with LoRA.
    Image,
    /// Text-to-image: SANA-Sprint with LoRA, prompts from files (the `t2i` section).
    T2i,
}

/// The text-to-image job (`task = "t2i"`, spec §6, §7.1, §11.1). `fav.batch` is K (particles per
/// prompt and step), `fav.conditions` is C (prompts per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct T2iConfig {
    /// The diffusers SANA-Sprint folder (`transformer/`, `vae/`, each `config.json` + weights).
    pub model: String,
    /// Prompt embeddings of the train prompts then the eval prompts, in file order
    /// (`scripts/sana_prompt_embeddings.py`).
    pub embeddings: String,
    /// Training prompts, one per line.
    pub train_prompts: String,
    /// Evaluation prompts, one per line.
    pub eval_prompts: String,
    /// A published reward (`hpsv2`, `pickscore`, `aesthetic`, `clip_score`, `nsfw`; its files in
    /// `[reward]`) or `server`.
    pub reward: String,
    /// sCM sampling steps (1–4).
    pub sample_steps: usize,
    /// Guidance scale, given to the model through its guidance embedding (one pass, no CFG).
    pub guidance: f64,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    /// How adapters start: `gaussian` (the reference's, §11.1) or `kaiming`.
    pub lora_init: crate::lora::LoraInit,
    /// AdamW weight decay (on the adapters).
    pub weight_decay: f64,
    /// Evaluation samples per eval prompt (fixed seeds, the same for the base and the aligned
    /// model).
    pub eval_batch: usize,
    /// Samples per eval prompt in the base-vs-aligned grids.
    pub grid: usize,
    /// Evaluation samples generated at once.
    pub micro_batch: usize,
    /// Keep only each sampling step's input and recompute the step (one transformer pass) in
    /// the backward pass (memory for one more forward).
    pub gradient_checkpointing: bool,
    /// The same for the DC-AE decoder, block by block.
    pub decoder_checkpointing: bool,
    /// The transformer's arithmetic: `bf16` as the reference trains (bf16 weights and products,
    /// float32 adapters, norms and attention; the VAE and reward in float32), `f32`, or `auto`:
    /// bf16 on CUDA, float32 on the CPU.
    pub precision: Precision,
}

/// [`T2iConfig::precision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Auto,
    F32,
    Bf16,
}

impl Default for T2iConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            embeddings: String::new(),
            train_prompts: String::new(),
            eval_prompts: String::new(),
            reward: "hpsv2".into(),
            sample_steps: 4,
            guidance: 4.5,
            lora_rank: 32,
            lora_alpha: 32.0,
            lora_init: crate::lora::LoraInit::Gaussian,
            weight_decay: 0.01,
            eval_batch: 4,
            grid: 4,
            micro_batch: 1,
            gradient_checkpointing: true,
            decoder_checkpointing: true,
            precision: Precision::Auto,
        }
    }
}

/// The image job (`task = "image"`). `fav.batch` is K (particles per class and step),
/// `fav.conditions` is C (classes per step), `eval.samples` the evaluation images (all classes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// `learned` (differentiable, encoder-feature particles), `jpeg_compress` or
    /// `jpeg_incompress` (black-box, pixel particles, `fav.reward_grad = "nes"`).
    pub reward: String,
    /// `fav` or the `draft` baseline (learned reward only).
    pub method: Method,
    /// DRaFT's reward multiplier λ.
    pub draft_multiplier: f64,
    /// DRaFT-K: backpropagate through the last K sampling steps (0: all).
    pub draft_k: usize,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    /// How adapters start: `kaiming` (PEFT's default) or `gaussian` (`N(0, 1/r)`).
    pub lora_init: crate::lora::LoraInit,
    /// Layers that get adapters, by module path or group: `all`; GAN `fc`, `convs`, `convs.N`;
    /// MeanFlow `embed`, `down`, `mid`, `up`, `film`, `out` (and `down.N`, …).
    pub lora_targets: Vec<String>,
    /// AdamW weight decay (on the adapters).
    pub weight_decay: f64,
    /// `gan` (one-step) or `meanflow` (few-step).
    pub family: String,
    /// Sampling steps: MeanFlow 1–4; the GAN is one-step (1).
    pub sample_steps: usize,
    /// Base generator safetensors. Empty: pretrain and cache under `pretrain.cache_dir`.
    pub base: String,
    /// Reward model safetensors. Empty: train and cache under `pretrain.cache_dir`.
    pub reward_model: String,
    /// Seed of the base generator and the reward model (fixed models, like downloaded ones:
    /// `seed` varies only the alignment).
    pub pretrain_seed: u64,
    pub gan_steps: usize,
    pub gan_batch: usize,
    pub meanflow_steps: usize,
    pub meanflow_batch: usize,
    pub reward_steps: usize,
    pub reward_batch: usize,
    /// Best-of-N sampling from the base, reported for each N here.
    pub best_of: Vec<usize>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            reward: "learned".into(),
            method: Method::Fav,
            family: "gan".into(),
            sample_steps: 1,
            draft_multiplier: 1.0,
            draft_k: 0,
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_init: crate::lora::LoraInit::Kaiming,
            lora_targets: vec!["all".into()],
            weight_decay: 0.01,
            base: String::new(),
            reward_model: String::new(),
            pretrain_seed: 0,
            gan_steps: 3000,
            gan_batch: 64,
            meanflow_steps: 3000,
            meanflow_batch: 64,
            reward_steps: 800,
            reward_batch: 64,
            best_of: vec![2, 4, 8, 16],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `vae`, `drift` or `meanflow`.
    pub family: String,
    /// Sampling steps (MeanFlow: 1–16; the one-step families need 1).
    pub sample_steps: usize,
    /// A base checkpoint (safetensors of the generator network). Empty: pretrain, and cache.
    pub base: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Evaluate (MMD² to data) every this many steps; the best EMA-MMD² weights are kept.
    pub eval_every: usize,
    /// Where pretrained base generators are cached, keyed by everything that shapes them.
    pub cache_dir: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FavConfig {
    pub beta: f64,
    pub temps_kde: Vec<f64>,
    pub temps_stein: Vec<f64>,
    pub kde_clamp: KdeClamp,
    pub repulsion: Repulsion,
    /// Generated particles per condition and step (K = N), all ranks together.
    pub batch: usize,
    /// Conditions per step (C); each is its own SVGD population of `batch` particles.
    pub conditions: usize,
    /// Compare parameter digests across ranks every this many steps (0 = never).
    pub check_every: usize,
    /// Frozen-model samples drawn once before alignment.
    pub ref_pool: usize,
    /// Reference particles drawn from the pool each step (M).
    pub ref_batch: usize,
    pub lr: f64,
    /// `exact` (autograd / closed form) or `nes` (black-box antithetic estimate, FAV-B).
    pub reward_grad: RewardGrad,
    /// NES perturbation scale σ.
    pub nes_sigma: f64,
    /// NES antithetic pairs per particle (2× reward calls).
    pub nes_samples: usize,
    /// Global-norm gradient clip; 0 disables it (the toy uses none).
    pub max_grad_norm: f64,
    /// Kernel entries materialised at once by the transport field.
    pub tile_elems: usize,
    /// A step with a non-finite loss, particle, reward, score, field or gradient: `stop` the
    /// job (exit 3, the last good checkpoint kept), or `skip` its update, at most
    /// `nonfinite_skips` times.
    pub nonfinite: NonFinite,
    pub nonfinite_skips: usize,
}

/// What a non-finite step does to the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    Stop,
    Skip,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Where checkpoints go: a path, `file://…` or `s3://bucket/prefix`. Empty: `<run dir>/checkpoints`.
    pub url: String,
    /// Save every this many steps (and at the end); 0 = never.
    pub every: usize,
    /// Complete checkpoints to keep (the newest is never deleted).
    pub keep: usize,
    /// Multipart part size for uploads, MiB (S3 needs ≥ 5).
    pub part_size_mib: usize,
    /// Longest one save may take, retries included, before it is given up (the previous
    /// checkpoint stays the latest): a server that hangs cannot stall training beyond this.
    pub timeout_s: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { url: String::new(), every: 100, keep: 3, part_size_mib: 8, timeout_s: 300 }
    }
}

/// FAV or the DRaFT baseline (spec §12) in the same harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Fav,
    Draft,
}

/// How the reward gradient `g` reaches SVGD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardGrad {
    /// The reward's own gradient.
    Exact,
    /// Antithetic zeroth-order estimate from reward values only (spec §9, FAV-B).
    Nes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many alignment steps (and at the end).
    pub every: usize,
    /// Model and target samples per evaluation.
    pub samples: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            task: Task::Toy,
            seed: 0,
            steps: 1500,
            device: DeviceKind::Cpu,
            comm: CommKind::Auto,
            model: ModelConfig::default(),
            pretrain: PretrainConfig::default(),
            fav: FavConfig::default(),
            eval: EvalConfig::default(),
            checkpoint: CheckpointConfig::default(),
            image: ImageConfig::default(),
            t2i: T2iConfig::default(),
            reward: RewardConfig::default(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { family: "vae".into(), sample_steps: 1, base: String::new() }
    }
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self { steps: 2000, batch: 2048, lr: 1e-3, eval_every: 250, cache_dir: "runs/cache".into() }
    }
}

impl Default for FavConfig {
    fn default() -> Self {
        Self {
            beta: 1.0,
            temps_kde: vec![0.05],
            temps_stein: vec![0.05],
            kde_clamp: KdeClamp::Toy,
            repulsion: Repulsion::TwoSided,
            batch: 2048,
            conditions: 1,
            check_every: 100,
            ref_pool: 200_000,
            ref_batch: 2048,
            lr: 1e-4,
            reward_grad: RewardGrad::Exact,
            nes_sigma: 0.01,
            nes_samples: 16,
            max_grad_norm: 0.0,
            tile_elems: 1 << 20,
            nonfinite: NonFinite::Stop,
            nonfinite_skips: 3,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every: 100, samples: 4096 }
    }
}

/// A refused configuration value: which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

pub(crate) fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), reason: reason.into() }
}

fn positive(key: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        Err(err(key, "must be ≥ 1"))
    } else {
        Ok(())
    }
}

fn positive_f(key: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(err(key, format!("must be finite and > 0, got {v}")))
    }
}

impl Config {
    /// Every impossible value is refused here, before any work, naming its key. The names of
    /// families and rewards, and what depends on them, are the registries' to check
    /// ([`crate::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.pretrain;
        positive("pretrain.batch", p.batch)?;
        positive("pretrain.eval_every", p.eval_every)?;
        positive_f("pretrain.lr", p.lr)?;
        if p.cache_dir.is_empty() {
            return Err(err("pretrain.cache_dir", "must name a directory"));
        }
        let f = &self.fav;
        positive("fav.batch", f.batch)?;
        positive("fav.conditions", f.conditions)?;
        positive("fav.ref_pool", f.ref_pool)?;
        positive("fav.ref_batch", f.ref_batch)?;
        positive_f("fav.lr", f.lr)?;
        positive_f("fav.nes_sigma", f.nes_sigma)?;
        positive("fav.nes_samples", f.nes_samples)?;
        if !(f.max_grad_norm.is_finite() && f.max_grad_norm >= 0.0) {
            return Err(err("fav.max_grad_norm", format!("must be ≥ 0 (0 = off), got {}", f.max_grad_norm)));
        }
        self.field().validate().map_err(|e| {
            let key = ["beta", "temps_kde", "temps_stein", "kde_clamp", "tile_elems"]
                .into_iter()
                .find(|k| e.starts_with(k))
                .unwrap_or("temps_kde");
            err(&format!("fav.{key}"), e)
        })?;
        if self.device.is_cuda() && !cfg!(feature = "cuda") {
            return Err(err("device", "this fav was built without CUDA; rebuild with `--features cuda`"));
        }
        positive("eval.every", self.eval.every)?;
        positive("checkpoint.keep", self.checkpoint.keep)?;
        positive("checkpoint.timeout_s", self.checkpoint.timeout_s as usize)?;
        if self.checkpoint.part_size_mib < 5 {
            return Err(err(
                "checkpoint.part_size_mib",
                format!("must be ≥ 5 (S3 minimum), got {}", self.checkpoint.part_size_mib),
            ));
        }
        if self.eval.samples < 2 {
            return Err(err("eval.samples", "must be ≥ 2"));
        }
        match self.task {
            Task::Image => self.validate_image()?,
            Task::T2i => self.validate_t2i()?,
            Task::Toy => {}
        }
        Ok(())
    }

    fn validate_t2i(&self) -> Result<(), ConfigError> {
        let t = &self.t2i;
        for (key, v) in [
            ("t2i.model", &t.model),
            ("t2i.embeddings", &t.embeddings),
            ("t2i.train_prompts", &t.train_prompts),
            ("t2i.eval_prompts", &t.eval_prompts),
        ] {
            if v.is_empty() {
                return Err(err(key, "must name a file or folder"));
            }
        }
        if !(1..=4).contains(&t.sample_steps) {
            return Err(err("t2i.sample_steps", format!("SANA-Sprint samples in 1–4 steps, got {}", t.sample_steps)));
        }
        if !(t.guidance.is_finite() && t.guidance >= 0.0) {
            return Err(err("t2i.guidance", format!("must be ≥ 0, got {}", t.guidance)));
        }
        positive("t2i.lora_rank", t.lora_rank)?;
        positive_f("t2i.lora_alpha", t.lora_alpha)?;
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(err("t2i.weight_decay", format!("must be ≥ 0, got {}", t.weight_decay)));
        }
        if t.eval_batch < 2 {
            return Err(err("t2i.eval_batch", "must be ≥ 2 (the spread and diversity need two samples)"));
        }
        positive("t2i.grid", t.grid)?;
        positive("t2i.micro_batch", t.micro_batch)?;
        Ok(())
    }

    fn validate_image(&self) -> Result<(), ConfigError> {
        let (i, f) = (&self.image, &self.fav);
        let classes = crate::data::shapes::CLASSES.len();
        if !classes.is_multiple_of(f.conditions) {
            return Err(err("fav.conditions", format!("must divide the {classes} classes, got {}", f.conditions)));
        }
        if !self.eval.samples.is_multiple_of(classes) || self.eval.samples < 2 * classes {
            return Err(err(
                "eval.samples",
                format!("must be a multiple of {classes} (the same count per class), ≥ {}", 2 * classes),
            ));
        }
        positive("image.lora_rank", i.lora_rank)?;
        positive_f("image.lora_alpha", i.lora_alpha)?;
        positive_f("image.draft_multiplier", i.draft_multiplier)?;
        if !(i.weight_decay.is_finite() && i.weight_decay >= 0.0) {
            return Err(err("image.weight_decay", format!("must be ≥ 0, got {}", i.weight_decay)));
        }
        if i.draft_k > i.sample_steps {
            return Err(err(
                "image.draft_k",
                format!("cannot exceed image.sample_steps = {}, got {}", i.sample_steps, i.draft_k),
            ));
        }
        positive("image.gan_batch", i.gan_batch)?;
        positive("image.meanflow_batch", i.meanflow_batch)?;
        positive("image.reward_batch", i.reward_batch)?;
        if i.best_of.contains(&0) {
            return Err(err("image.best_of", "every N must be ≥ 1"));
        }
        Ok(())
    }

    /// Whether the t2i transformer runs in bf16 ([`T2iConfig::precision`] on this device).
    pub fn t2i_bf16(&self) -> bool {
        match self.t2i.precision {
            Precision::Auto => self.device.is_cuda(),
            Precision::F32 => false,
            Precision::Bf16 => true,
        }
    }

    /// The generator family of the job's task.
    pub fn family(&self) -> &str {
        match self.task {
            Task::Toy => &self.model.family,
            Task::Image => &self.image.family,
            Task::T2i => "sana_sprint",
        }
    }

    pub fn field(&self) -> FieldConfig {
        let f = &self.fav;
        FieldConfig {
            beta: f.beta,
            temps_kde: f.temps_kde.clone(),
            temps_stein: f.temps_stein.clone(),
            kde_clamp: f.kde_clamp,
            repulsion: f.repulsion,
            tile_elems: f.tile_elems,
            engine: Default::default(),
        }
    }
}
