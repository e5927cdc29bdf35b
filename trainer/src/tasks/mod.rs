//! What differs between jobs — the data, the frozen models, the evaluation and the outputs —
//! behind the one [`Task`] trait the run loop drives ([`crate::run`]). A task is built from the
//! config: `task` picks the kind, and its family registry (`models::toy`, `models::image`)
//! picks the generator by name.

pub mod image;
pub mod t2i;
pub mod toy;
pub mod toy_eval;

use crate::checkpoint::Resumed;
use crate::config::{err, Config, ConfigError, Task as Kind};
use crate::error::JobError;
use crate::models::{self, Family, FamilyVisitor};
use crate::observe::Observer;
use crate::step::{StepStats, Timings, Trainer};
use crate::tensors::DeviceError;
use burn::module::Module;
use burn::tensor::Device;
use bytes::Bytes;
use fav_comm::Collective;
use sha2::{Digest, Sha256};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// One kind of job, as the run loop sees it. Rank 0 prepares the frozen models, evaluates and
/// writes the outputs; every rank starts the trainer and steps it.
pub trait Task<'c> {
    /// Rank 0, before the ranks start together: the frozen models (the base generator, a
    /// reward model) from the checkpoint being resumed, a named file, the cache, or trained now.
    fn prepare(&mut self, resumed: Option<&Resumed>, obs: &mut dyn Observer, stop: &AtomicBool)
        -> Result<(), JobError>;
    /// Every rank: rank 0's frozen models to every rank, then the trainer.
    fn start(&mut self, comm: &'c dyn Collective) -> Result<(), JobError>;
    /// Rank 0, before alignment: score the base (kept for the summary); the metric lines it logs
    /// at step 0, if any.
    fn baseline(&mut self) -> Result<Vec<String>, JobError>;
    /// Rank 0, resuming: what the task keeps across restarts beyond the trainer's state.
    fn resume(&mut self, _resumed: &Resumed) {}
    /// The trainer (after [`Task::start`]).
    fn trainer(&mut self) -> &mut dyn Trainer;
    /// Rank 0: evaluate the model after `step` steps; `stats` are the last step's.
    fn evaluate(&mut self, step: usize, stats: &StepStats, wall_s: f64) -> Result<Evaluation, JobError>;
    /// Rank 0: the task's checkpoint parts (the frozen models, weights for people and tools,
    /// `export.json`), besides the trainer's state the loop adds.
    fn checkpoint_parts(&mut self) -> Result<Vec<(String, Bytes)>, JobError>;
    /// Rank 0, after the last step: the outputs in `out`, and what to report.
    fn finish(&mut self, out: &Path, metrics: &[String], run: &RunInfo) -> Result<Report, JobError>;
}

/// One evaluation: its `metrics.jsonl` line, a line for people, the mean reward, and whether
/// every score is finite (a model whose samples score NaN is diverged, whatever its weights).
pub struct Evaluation {
    pub line: String,
    pub display: String,
    pub reward: f64,
    pub finite: bool,
}

/// What the loop knows of the run when it ends.
pub struct RunInfo {
    pub steps: usize,
    pub world_size: usize,
    pub wall_s: f64,
    pub pretrain_s: f64,
    pub align_s: f64,
    /// Mean time per step in each part (rank 0).
    pub step_time: Timings,
    /// The checkpoint step this process resumed from, if it resumed.
    pub resumed_from: Option<usize>,
}

/// What a finished job reports: `summary.json` and a few lines for the terminal.
#[derive(Debug, Clone)]
pub struct Report {
    pub summary: serde_json::Value,
    pub text: String,
}

/// A kind of task, made for any family of its registry.
trait Maker {
    fn make<'c, F: Family>(cfg: &Config, device: &Device) -> Box<dyn Task<'c> + 'c>;
}

/// Builds task kind `K` for the family the registry picks.
struct Build<'a, 'c, K> {
    cfg: &'a Config,
    device: &'a Device,
    kind: PhantomData<(&'c (), K)>,
}

impl<'c, K: Maker> FamilyVisitor for Build<'_, 'c, K> {
    type Output = Box<dyn Task<'c> + 'c>;
    fn visit<F: Family>(self) -> Self::Output {
        K::make::<F>(self.cfg, self.device)
    }
}

/// Build the task `cfg` describes (its names checked by [`check`]).
pub fn build<'c>(cfg: &Config, device: &Device) -> Result<Box<dyn Task<'c> + 'c>, ConfigError> {
    match cfg.task {
        Kind::Toy => {
            let b = Build::<toy::Toy> { cfg, device, kind: PhantomData };
            models::toy::with_family(&cfg.model.family, b)
                .ok_or_else(|| unknown("model.family", &cfg.model.family, models::toy::NAMES))
        }
        Kind::Image => {
            let b = Build::<image::Image> { cfg, device, kind: PhantomData };
            models::image::with_family(&cfg.image.family, b)
                .ok_or_else(|| unknown("image.family", &cfg.image.family, models::image::NAMES))
        }
        Kind::T2i => Ok(t2i::make(cfg, device)),
    }
}

/// Refuse what the registries know to be wrong: unknown names, and what depends on the family
/// or the reward (sampling steps, adapter targets, black-box rewards).
pub fn check(cfg: &Config) -> Result<(), ConfigError> {
    match cfg.task {
        Kind::Toy => models::toy::with_family(
            &cfg.model.family,
            Steps { steps: cfg.model.sample_steps, key: "model.sample_steps" },
        )
        .ok_or_else(|| unknown("model.family", &cfg.model.family, models::toy::NAMES))?,
        Kind::Image => {
            models::image::with_family(
                &cfg.image.family,
                Steps { steps: cfg.image.sample_steps, key: "image.sample_steps" },
            )
            .ok_or_else(|| unknown("image.family", &cfg.image.family, models::image::NAMES))??;
            image::check(cfg)
        }
        Kind::T2i => t2i::check(cfg),
    }
}

/// §6.2: the conditions of `step` out of `n` — round-robin over a permutation of all of them, a
/// new permutation each time the round restarts (`max(n / c, 1)` chunks a round), drawn from the
/// run seed. A pure function of `(seed, step)`, so a resumed run visits the same conditions.
pub fn chunk_of_step(seed: u64, step: usize, c: usize, n: usize) -> Vec<usize> {
    let chunks = (n / c).max(1);
    let (round, ci) = (step / chunks, step % chunks);
    let mut perm: Vec<usize> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(
        &mut perm[..],
        &mut crate::noise::rng(seed, crate::noise::Stream::Conditions, round as u64),
    );
    perm[ci * c..(ci + 1) * c].to_vec()
}

/// Mean pairwise Euclidean distance between the `n` rows of `features` (row-major).
pub(crate) fn mean_pairwise_distance(features: &[f32], n: usize) -> f64 {
    let e = features.len() / n.max(1);
    let (mut sum, mut pairs) = (0.0, 0usize);
    for a in 0..n {
        for b in a + 1..n {
            let d2: f32 = (0..e).map(|i| (features[a * e + i] - features[b * e + i]).powi(2)).sum();
            sum += f64::from(d2).sqrt();
            pairs += 1;
        }
    }
    sum / pairs.max(1) as f64
}

fn unknown(key: &str, name: &str, names: &[&str]) -> ConfigError {
    err(key, format!("unknown name {name:?}; expected one of {}", names.join(", ")))
}

/// A family's sampling steps.
struct Steps {
    steps: usize,
    key: &'static str,
}

impl FamilyVisitor for Steps {
    type Output = Result<(), ConfigError>;
    fn visit<F: Family>(self) -> Self::Output {
        if F::STEPS.contains(&self.steps) {
            Ok(())
        } else {
            let (lo, hi) = (F::STEPS.start(), F::STEPS.end());
            let allowed = if lo == hi { format!("a one-step generator ({lo})") } else { format!("{lo}–{hi} steps") };
            Err(err(self.key, format!("family {:?} samples in {allowed}, got {}", F::NAME, self.steps)))
        }
    }
}

/// The cache file of a trained frozen model: `<cache_dir>/<kind>-<hash of key>.safetensors`.
pub fn cache_path(cfg: &Config, kind: &str, key: &serde_json::Value) -> PathBuf {
    let hash = Sha256::digest(key.to_string().as_bytes());
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Path::new(&cfg.pretrain.cache_dir).join(format!("{kind}-{hex}.safetensors"))
}

/// A frozen model: the file `named` if set, else the cache, else `train()` now (and cached).
/// Returns the model and where it came from; `train` returning `None` (a stop) is
/// [`JobError::StoppedPreparing`], a device failure [`JobError::DeviceFailed`].
pub fn load_or_train<M: Module>(
    fresh: M,
    named: &str,
    cache: PathBuf,
    what: &'static str,
    train: impl FnOnce() -> Result<Option<M>, DeviceError>,
) -> Result<(M, String), JobError> {
    if !named.is_empty() {
        let path = PathBuf::from(named);
        return Ok((crate::weights::load(fresh, &path)?, path.display().to_string()));
    }
    if cache.is_file() {
        match crate::weights::load(fresh, &cache) {
            Ok(m) => {
                tracing::info!(path = %cache.display(), "using cached {what}");
                return Ok((m, cache.display().to_string()));
            }
            Err(e) => tracing::warn!("ignoring unusable cached {what} ({e}); training again"),
        }
    }
    // Minutes of training must not be lost to a cache that cannot be written: check it first.
    writable_dir(&cache)?;
    let m =
        train().map_err(JobError::device(format!("training the {what}")))?.ok_or(JobError::StoppedPreparing(what))?;
    crate::weights::save(&m, &cache)?;
    Ok((m, cache.display().to_string()))
}

/// The folder of `file` exists (or can be made) and takes a new file.
fn writable_dir(file: &Path) -> Result<(), JobError> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let probe = dir.join(format!(".fav-write-test-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            let reason = format!("pretrain.cache_dir cannot hold the trained model: {e}");
            crate::error::dir_err(dir, reason)
        })
}

/// The weights of a checkpoint part.
pub(crate) fn from_part<M: Module>(fresh: M, r: &Resumed, part: &str) -> Result<M, JobError> {
    let bytes = r.part(part)?;
    Ok(crate::weights::from_bytes(fresh, bytes, &format!("checkpoint step {} part {part}", r.state.step))?)
}

/// Safetensors bytes of a module, for a checkpoint part.
pub(crate) fn part_bytes<M: Module>(m: &M) -> Result<Bytes, JobError> {
    crate::weights::to_bytes(m)
        .map(Bytes::from)
        .map_err(|e| JobError::Checkpoint(crate::checkpoint::CheckpointError::Format(e)))
}

/// Rank 0's module on every rank.
pub(crate) fn share<M: Module>(m: M, what: &'static str, comm: &dyn Collective) -> Result<M, JobError> {
    crate::sync::broadcast_module(m, comm).map_err(|reason| JobError::Broadcast { what, reason })
}

/// `curves.png` from the lines of `metrics.jsonl`: one panel per `(title, key)`.
pub(crate) fn curves(metrics: &[String], panels: &[(&str, &str)], path: &Path) -> Result<(), JobError> {
    let rows: Vec<serde_json::Value> = metrics.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series = |key: &str| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?))).filter(|p| p.1.is_finite()).collect()
    };
    let panels: Vec<(&str, Vec<(f64, f64)>)> = panels.iter().map(|(title, key)| (*title, series(key))).collect();
    crate::plot::curves(&panels, path).map_err(|e| crate::error::dir_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::toy::VaeDecoder;

    /// A device failure while rank 0 trains a frozen model ends the job naming what it trained,
    /// with the memory hint, and caches nothing: a rerun trains again rather than loading a
    /// half-trained model.
    #[test]
    fn a_device_failure_while_training_is_named_and_nothing_is_cached() {
        let dir = std::env::temp_dir().join(format!("fav-load-or-train-{}", std::process::id()));
        let cache = dir.join("base.safetensors");
        let fresh = VaeDecoder::init(&Config::default(), &Device::flex());
        let oom = || Err(DeviceError("out of device memory allocating 4096 bytes".into()));
        let e = load_or_train(fresh, "", cache.clone(), "base generator", oom).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, JobError::DeviceFailed { .. }), "{msg}");
        assert!(msg.contains("the device failed training the base generator: out of device memory"), "{msg}");
        assert!(msg.contains("ran out of memory"), "the hint: {msg}");
        assert!(!cache.exists(), "a failed training left a cache");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
