//! One training job from config to run directory: base generator (loaded, cached or pretrained),
//! FAV alignment with periodic evaluation, and the outputs a person or a script reads.
//!
//! Run directory: `metrics.jsonl` (one object per evaluation), `summary.json`,
//! `final.safetensors` (aligned network by module path), `best.safetensors` (the evaluation with
//! the lowest EMA of MMD², spec §10.3), `samples.png` (base | aligned | target),
//! `curves.png` (loss, reward, KL, MMD² over steps), `config.json` (the resolved configuration).

use crate::align::{AlignError, Aligner};
use crate::checkpoint::{self, Resumed, Saver, State};
use crate::config::Config;
use crate::eval::{Evaluator, Scores};
use crate::generators::{Mlp, Sampler};
use crate::metrics::EmaBest;
use crate::{io, plot, pretrain, toy};
use burn::tensor::Device;
use bytes::Bytes;
use fav_comm::{Collective, CommError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What the job tells whoever runs it (progress bars, logs).
pub trait Observer {
    /// A long phase starts: `total` units of work.
    fn phase(&mut self, _name: &str, _total: usize) {}
    /// `done` units of the current phase are finished; `loss` is the latest.
    fn progress(&mut self, _done: usize, _loss: f64) {}
    /// An evaluation finished: its mean reward and a one-line account of it.
    fn eval(&mut self, _reward: f64, _line: &str) {}
}

/// Observes nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub loss: f64,
    pub kl: f64,
    pub mmd2: f64,
    pub reward_mean: f64,
    pub wall_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The pretrained generator before alignment, against the tilted target.
    pub base: Scores,
    /// The aligned generator, against the tilted target.
    pub final_: Scores,
    /// How well the base generator fits the untilted data.
    pub base_vs_data: Scores,
    /// FAV's own target `p_base · r^β` against the tilted target: where alignment from this base
    /// heads (the amortised generator lands near these scores, not exactly on them).
    pub base_target: Scores,
    /// The evaluation with the lowest EMA of MMD² (spec §10.3), saved as `best.safetensors`.
    pub best: Option<BestEval>,
    pub steps: usize,
    pub seed: u64,
    pub world_size: usize,
    pub wall_s: f64,
    pub pretrain_s: f64,
    pub align_s: f64,
    pub base_checkpoint: String,
    /// The checkpoint step this process resumed from, if it resumed.
    pub resumed_from: Option<usize>,
}

/// Where the best weights were taken, and their scores against the tilted target.
#[derive(Clone, Debug, Serialize)]
pub struct BestEval {
    pub step: usize,
    pub ema_mmd2: f64,
    pub kl: f64,
    pub mmd2: f64,
    pub reward_mean: f64,
}

/// Rank 0's best weights so far, kept across restarts: the EMA is replayed from the checkpoint's
/// metric lines and the weights come back from its `best.safetensors` part.
#[derive(Default)]
struct BestWeights {
    ema: EmaBest,
    record: Option<EvalRecord>,
    weights: Option<Bytes>,
}

impl BestWeights {
    const PART: &str = "best.safetensors";

    fn resume(r: &Resumed) -> Self {
        let Some(weights) = r.parts.get(Self::PART) else {
            tracing::warn!("checkpoint has no {}; the best weights are tracked from here on", Self::PART);
            return Self::default();
        };
        let mut best = Self::default();
        for rec in r.state.metrics.iter().filter_map(|l| serde_json::from_str::<EvalRecord>(l).ok()) {
            if best.ema.offer(rec.mmd2, rec.step) {
                best.record = Some(rec);
            }
        }
        best.weights = best.record.is_some().then(|| weights.clone());
        best
    }

    fn offer(&mut self, rec: &EvalRecord, net: &Mlp) -> Result<(), JobError> {
        if self.ema.offer(rec.mmd2, rec.step) {
            self.record = Some(rec.clone());
            self.weights = Some(checkpoint::safetensors_bytes(net)?);
        }
        Ok(())
    }

    fn eval(&self) -> Option<BestEval> {
        let (ema_mmd2, step) = self.ema.best()?;
        let r = self.record.as_ref()?;
        Some(BestEval { step, ema_mmd2, kl: r.kl, mmd2: r.mmd2, reward_mean: r.reward_mean })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("run directory {path}: {reason}")]
    RunDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Weights(#[from] io::WeightsError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Align(#[from] AlignError),
    #[error("communication: {0}")]
    Comm(#[from] CommError),
    #[error("rank 0 could not prepare the base generator (see its log)")]
    PeerFailed,
    #[error("{0}")]
    Diverged(String),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("resume: {0}")]
    Resume(String),
    #[error("asked to stop at step {step}, but its checkpoint could not be saved: {reason}")]
    StopUnsaved { step: usize, reason: String },
    /// A stop was requested while rank 0 was still training a frozen model (base or reward
    /// model); nothing is saved, so a rerun trains it again. Becomes [`Outcome::StoppedEarly`].
    #[error("stopped while training the {0}")]
    StoppedPreparing(&'static str),
}

/// How a job ended.
#[derive(Debug)]
pub enum Outcome<S = Summary> {
    /// Every step ran; rank 0 has the summary, the other ranks `None`.
    Finished(Option<Box<S>>),
    /// A stop was requested (a signal); every rank stopped after `step` and its checkpoint is
    /// saved, so `--resume auto` continues from there.
    Stopped { step: usize },
    /// A stop was requested before alignment began (while a base or reward model was being
    /// trained); there was nothing to checkpoint and a rerun starts that training again.
    StoppedEarly,
}

/// Start the pretraining phase `phase` of `steps` steps on `obs`. The returned callback reports
/// each step's loss and asks the training to stop once a stop was requested (a signal).
pub(crate) fn pretraining<'a>(
    obs: &'a mut dyn Observer,
    stop: &'a AtomicBool,
    phase: &str,
    steps: usize,
) -> impl FnMut(usize, f64) -> ControlFlow<()> + 'a {
    obs.phase(phase, steps);
    move |step, loss| {
        obs.progress(step, loss);
        if stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Tell every rank how rank 0's preparation ended before they wait for its weights: `Some` with
/// this rank's value when it succeeded, `None` when a signal stopped it (every rank then
/// returns [`Outcome::StoppedEarly`]), the error otherwise.
pub(crate) fn share_prepared<T>(prepared: Result<T, JobError>, comm: &dyn Collective) -> Result<Option<T>, JobError> {
    const FAILED: u8 = 0;
    const READY: u8 = 1;
    const STOPPED: u8 = 2;
    let mut code = [match &prepared {
        Ok(_) => READY,
        Err(JobError::StoppedPreparing(_)) => STOPPED,
        Err(_) => FAILED,
    }];
    comm.broadcast(&mut code, 0)?;
    match (prepared, code[0]) {
        (Err(JobError::StoppedPreparing(what)), _) => {
            tracing::warn!(
                "stopped while training the {what}: nothing to checkpoint yet, a rerun trains it again (name a trained \
                 file in the config to skip this)"
            );
            Ok(None)
        }
        (Err(e), _) => Err(e),
        (Ok(p), READY) => Ok(Some(p)),
        (Ok(_), STOPPED) => Ok(None),
        (Ok(_), _) => Err(JobError::PeerFailed),
    }
}

/// True at every `every`-th step and at the last one; `every = 0` means never.
pub(crate) fn due(done: usize, every: usize, last: usize) -> bool {
    every > 0 && (done.is_multiple_of(every) || done == last)
}

/// Rank 0's `metrics.jsonl`: rewritten from a resumed checkpoint's lines, then one flushed line
/// per evaluation (a crash loses none that were logged).
pub(crate) struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    pub(crate) fn create(path: PathBuf, lines: &[String]) -> Result<Self, JobError> {
        let mut file = std::fs::File::create(&path).map_err(|e| dir_err(&path, e))?;
        for l in lines {
            writeln!(file, "{l}").map_err(|e| dir_err(&path, e))?;
        }
        Ok(Self { file, path })
    }

    pub(crate) fn append(&mut self, line: &str) -> Result<(), JobError> {
        writeln!(self.file, "{line}").and_then(|_| self.file.flush()).map_err(|e| dir_err(&self.path, e))
    }
}

pub(crate) fn dir_err(path: &Path, e: impl ToString) -> JobError {
    JobError::RunDir { path: path.to_path_buf(), reason: e.to_string() }
}

/// The cache file of a pretrained base: keyed by everything that shapes its weights.
pub fn base_cache_path(cfg: &Config) -> PathBuf {
    let key = serde_json::json!({
        "v": 1,
        "family": cfg.model.family,
        "seed": cfg.seed,
        "steps": cfg.pretrain.steps,
        "batch": cfg.pretrain.batch,
        "lr": cfg.pretrain.lr,
        "eval_every": cfg.pretrain.eval_every,
        "eval_samples": cfg.eval.samples,
    });
    let hash = Sha256::digest(key.to_string().as_bytes());
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Path::new(&cfg.pretrain.cache_dir).join(format!("{:?}-{hex}.safetensors", cfg.model.family).to_lowercase())
}

/// The base network: from `model.base`, from the cache, or pretrained now (and cached).
fn base_network(
    cfg: &Config,
    sampler: &Sampler,
    device: &Device,
    obs: &mut dyn Observer,
    stop: &AtomicBool,
) -> Result<(Mlp, String), JobError> {
    let fresh = sampler.new_net(device);
    if !cfg.model.base.is_empty() {
        let path = PathBuf::from(&cfg.model.base);
        return Ok((io::load(fresh, &path)?, path.display().to_string()));
    }
    let cache = base_cache_path(cfg);
    if cache.is_file() {
        match io::load(fresh.clone(), &cache) {
            Ok(net) => {
                tracing::info!(path = %cache.display(), "using cached base generator");
                return Ok((net, cache.display().to_string()));
            }
            Err(e) => tracing::warn!("ignoring unusable cached base ({e}); pretraining again"),
        }
    }
    tracing::info!(family = ?cfg.model.family, steps = cfg.pretrain.steps, "pretraining the base generator");
    let mut progress = pretraining(obs, stop, "pretrain", cfg.pretrain.steps);
    let net = pretrain::pretrain(cfg, sampler, device, &mut |done, _, loss| progress(done, loss))
        .ok_or(JobError::StoppedPreparing("base generator"))?;
    io::save(&net, &cache)?;
    Ok((net, cache.display().to_string()))
}

/// Run the whole job into `out`.
pub fn run(cfg: &Config, out: &Path, obs: &mut dyn Observer) -> Result<Summary, JobError> {
    match run_on(cfg, out, obs, &fav_comm::SingleProcess, &Resume::Auto, &AtomicBool::new(false))? {
        Outcome::Finished(s) => Ok(*s.expect("rank 0 has a summary")),
        Outcome::Stopped { .. } | Outcome::StoppedEarly => unreachable!("nothing asks this job to stop"),
    }
}

/// Where a run resumes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The latest complete checkpoint in the run's own store, if there is one.
    Auto,
    /// Start afresh.
    Fresh,
    /// The latest complete checkpoint of another store (a path, `file://` or `s3://` URL).
    From(String),
}

/// What rank 0 prepares before the ranks start together.
struct Prepared {
    saver: Option<Saver>,
    resumed: Option<Resumed>,
    base: Mlp,
    base_path: String,
}

fn prepare(
    cfg: &Config,
    out: &Path,
    obs: &mut dyn Observer,
    resume: &Resume,
    sampler: &Sampler,
    device: &Device,
    stop: &AtomicBool,
) -> Result<Prepared, JobError> {
    let (saver, resumed) = open_checkpoints(cfg, out, resume)?;
    let (base, base_path) = match &resumed {
        Some(r) => (
            checkpoint::load_safetensors(sampler.new_net(device), r.part("base.safetensors")?)?,
            format!("checkpoint step {}", r.state.step),
        ),
        None => base_network(cfg, sampler, device, obs, stop)?,
    };
    Ok(Prepared { saver, resumed, base, base_path })
}

/// Rank 0's start: the run directory with `config.json`, the checkpoint store (opened now, so a
/// missing bucket or bad credentials fail before any work) and the checkpoint to resume from.
pub(crate) fn open_checkpoints(
    cfg: &Config,
    out: &Path,
    resume: &Resume,
) -> Result<(Option<Saver>, Option<Resumed>), JobError> {
    std::fs::create_dir_all(out).map_err(|e| dir_err(out, e))?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(cfg).expect("config serialises"))
        .map_err(|e| dir_err(&out.join("config.json"), e))?;
    let c = &cfg.checkpoint;
    let url = if c.url.is_empty() { out.join("checkpoints").display().to_string() } else { c.url.clone() };
    let part = c.part_size_mib << 20;
    let saver =
        if c.every > 0 || *resume == Resume::Auto { Some(Saver::open(&url, part, c.keep, c.timeout_s)?) } else { None };
    let resumed = match resume {
        Resume::Fresh => None,
        Resume::Auto => match &saver {
            Some(s) => s.latest(cfg)?,
            None => None,
        },
        Resume::From(from) => Some(
            Saver::open(from, part, c.keep, c.timeout_s)?
                .latest(cfg)?
                .ok_or_else(|| JobError::Resume(format!("no complete checkpoint in {from}")))?,
        ),
    };
    if let Some(r) = &resumed {
        tracing::info!(step = r.state.step, "resuming from checkpoint");
    }
    Ok((saver, resumed))
}

/// The resume state every rank needs (step, network record, optimiser state), from rank 0's
/// checkpoint.
pub(crate) fn resume_parts(r: &Resumed) -> Result<(usize, &Bytes, &Bytes), JobError> {
    Ok((r.state.step, r.part("model.burnpack")?, r.part("optimizer.burnpack")?))
}

/// Send rank 0's optional resume state (step, network record, optimiser state) to every rank.
pub(crate) fn share_resume(
    comm: &dyn Collective,
    mine: Option<(usize, &Bytes, &Bytes)>,
) -> Result<Option<(usize, Bytes, Bytes)>, CommError> {
    if comm.size() == 1 {
        return Ok(mine.map(|(s, m, o)| (s, m.clone(), o.clone())));
    }
    let mut head = [0u8; 24];
    if let Some((s, m, o)) = mine {
        head[..8].copy_from_slice(&(s as u64 + 1).to_le_bytes());
        head[8..16].copy_from_slice(&(m.len() as u64).to_le_bytes());
        head[16..].copy_from_slice(&(o.len() as u64).to_le_bytes());
    }
    comm.broadcast(&mut head, 0)?;
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes")) as usize;
    if word(0) == 0 {
        return Ok(None);
    }
    let mut model = mine.map_or_else(|| vec![0; word(8)], |(_, m, _)| m.to_vec());
    let mut optim = mine.map_or_else(|| vec![0; word(16)], |(_, _, o)| o.to_vec());
    comm.broadcast(&mut model, 0)?;
    comm.broadcast(&mut optim, 0)?;
    Ok(Some((word(0) - 1, Bytes::from(model), Bytes::from(optim))))
}

/// Run the whole job on every rank of `comm`. Rank 0 prepares the base generator (and sends it
/// to the others), evaluates, saves checkpoints and writes the run directory; it returns the
/// summary, the other ranks return `None`. When `stop` is set on any rank (a signal), every rank
/// finishes the current step, rank 0 saves a checkpoint and waits for it, and all return
/// [`Outcome::Stopped`].
pub fn run_on(
    cfg: &Config,
    out: &Path,
    obs: &mut dyn Observer,
    comm: &dyn Collective,
    resume: &Resume,
    stop: &AtomicBool,
) -> Result<Outcome, JobError> {
    cfg.validate()?;
    crate::align::Layout::new(cfg.fav.batch, cfg.fav.conditions, comm.size(), comm.rank())
        .map_err(|e| JobError::Align(AlignError::Layout(e)))?;
    let t0 = Instant::now();
    let lead = comm.rank() == 0;
    let device = cfg.burn_device()?;
    let sampler = Sampler { family: cfg.model.family, steps: cfg.model.sample_steps };

    let prepared = if lead {
        prepare(cfg, out, obs, resume, &sampler, &device, stop)
    } else {
        Ok(Prepared { saver: None, resumed: None, base: sampler.new_net(&device), base_path: String::new() })
    };
    let Some(Prepared { mut saver, resumed, base, base_path }) = share_prepared(prepared, comm)? else {
        return Ok(Outcome::StoppedEarly);
    };
    let base = crate::sync::broadcast_module(base, comm).map_err(|e| AlignError::Broadcast(e.to_string()))?;
    let pretrain_s = t0.elapsed().as_secs_f64();
    // Only rank 0 evaluates.
    let eval = lead.then(|| Evaluator::new(cfg.seed, cfg.eval.samples, cfg.fav.beta, &sampler, &device));
    let (base_x, base_scores, base_vs_data, base_target) = if let Some(eval) = &eval {
        let x = eval.samples(&sampler, &base);
        let (t, d) = (eval.score(&x, &eval.target), eval.score(&x, &eval.data));
        let limit = eval.score(&eval.base_target(&sampler, &base), &eval.target);
        tracing::info!(
            kl_to_data = d.kl,
            kl = t.kl,
            mmd2 = t.mmd2,
            reward = t.reward_mean,
            "base generator against the tilted target"
        );
        tracing::info!(
            kl = limit.kl,
            mmd2 = limit.mmd2,
            reward = limit.reward_mean,
            "FAV's own target p_base·r^β against the tilted target (where alignment from this base heads)"
        );
        (x, t, d, limit)
    } else {
        let zero = Scores { kl: 0.0, mmd2: 0.0, reward_mean: 0.0 };
        (Vec::new(), zero, zero, zero)
    };

    let t_align = Instant::now();
    let mut aligner = Aligner::new(cfg, sampler, &base, &device, comm)?;
    let shared = share_resume(comm, resumed.as_ref().map(resume_parts).transpose()?)?;
    let start = match &shared {
        Some((step, model, optim)) => {
            aligner.restore(model, optim)?;
            *step
        }
        None => 0,
    };
    let (mut metric_lines, wall_before) =
        resumed.as_ref().map_or((Vec::new(), 0.0), |r| (r.state.metrics.clone(), r.state.wall_s));
    let mut best = resumed.as_ref().map(BestWeights::resume).unwrap_or_default();
    let wall = || wall_before + t0.elapsed().as_secs_f64();
    let mut metrics = lead.then(|| MetricsLog::create(out.join("metrics.jsonl"), &metric_lines)).transpose()?;
    let base_bytes = if saver.is_some() { Some(checkpoint::safetensors_bytes(&base)?) } else { None };
    let hash = checkpoint::config_hash(cfg);
    obs.phase("align", cfg.steps);
    obs.progress(start, f64::NAN);
    for step in start..cfg.steps {
        let stats = aligner.step(step)?;
        obs.progress(step + 1, stats.loss);
        let done = step + 1;
        if due(done, cfg.fav.check_every, cfg.steps) {
            crate::sync::check_in_sync(&aligner.net, comm, done).map_err(JobError::Diverged)?;
        }
        let stopping = crate::sync::any_rank(stop.load(Ordering::Relaxed), comm)?;
        if let (Some(metrics), Some(eval)) = (metrics.as_mut(), eval.as_ref()) {
            if due(done, cfg.eval.every, cfg.steps) {
                let net = aligner.plain();
                let s = eval.score(&eval.samples(&sampler, &net), &eval.target);
                let rec = EvalRecord {
                    step: done,
                    loss: stats.loss,
                    kl: s.kl,
                    mmd2: s.mmd2,
                    reward_mean: s.reward_mean,
                    wall_s: wall(),
                };
                let line = serde_json::to_string(&rec).expect("record serialises");
                metrics.append(&line)?;
                metric_lines.push(line);
                best.offer(&rec, &net)?;
                obs.eval(
                    rec.reward_mean,
                    &format!(
                        "step {:>6}  kl {:.4}  mmd2 {:.5}  reward {:.4}  loss {:.3e}",
                        rec.step, rec.kl, rec.mmd2, rec.reward_mean, rec.loss
                    ),
                );
            }
        }
        let every = cfg.checkpoint.every;
        if let (Some(saver), Some(base_bytes)) = (saver.as_mut(), base_bytes.as_ref()) {
            if stopping || due(done, every, cfg.steps) {
                let state = State {
                    step: done,
                    seed: cfg.seed,
                    world_size: comm.size(),
                    metrics: metric_lines.clone(),
                    wall_s: wall(),
                    config: cfg.clone(),
                };
                let mut parts = vec![
                    ("model.burnpack".to_string(), checkpoint::record_bytes(&aligner.net)?),
                    ("optimizer.burnpack".to_string(), aligner.optimizer_bytes()?),
                    ("base.safetensors".to_string(), base_bytes.clone()),
                    ("model.safetensors".to_string(), checkpoint::safetensors_bytes(&aligner.plain())?),
                    (
                        "state.json".to_string(),
                        Bytes::from(serde_json::to_vec_pretty(&state).expect("state serialises")),
                    ),
                ];
                if let Some(w) = &best.weights {
                    parts.push((BestWeights::PART.to_string(), w.clone()));
                }
                let meta = serde_json::json!({ "world_size": comm.size(), "family": cfg.model.family });
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
    let eval = eval.expect("rank 0 evaluates");
    let aligned = aligner.plain();
    io::save(&aligned, &out.join("final.safetensors"))?;
    if let Some(w) = &best.weights {
        let path = out.join(BestWeights::PART);
        io::write_atomic(&path, w).map_err(|e| dir_err(&path, e))?;
    }
    let final_x = eval.samples(&sampler, &aligned);
    let last = eval.score(&final_x, &eval.target);
    plot::density_panels(
        &[("BASE", &base_x), ("ALIGNED", &final_x), ("TARGET", &eval.target)],
        &toy::centres(),
        &out.join("samples.png"),
    )
    .map_err(|e| dir_err(&out.join("samples.png"), e))?;
    training_curves(&metric_lines, &out.join("curves.png")).map_err(|e| dir_err(&out.join("curves.png"), e))?;
    let summary = Summary {
        base: base_scores,
        final_: last,
        base_vs_data,
        base_target,
        best: best.eval(),
        steps: cfg.steps,
        seed: cfg.seed,
        world_size: comm.size(),
        wall_s: wall(),
        pretrain_s,
        align_s,
        base_checkpoint: base_path,
        resumed_from: shared.map(|(s, _, _)| s),
    };
    let mut json = serde_json::to_value(&summary).expect("summary serialises");
    if let Some(o) = json.as_object_mut() {
        let f = o.remove("final_").expect("field present");
        o.insert("final".into(), f);
    }
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&json).expect("json"))
        .map_err(|e| dir_err(&out.join("summary.json"), e))?;
    Ok(Outcome::Finished(Some(Box::new(summary))))
}

/// `curves.png`: loss, mean reward, KL and MMD² against the tilted target over the steps of
/// `metrics.jsonl`.
fn training_curves(metric_lines: &[String], path: &Path) -> Result<(), String> {
    let rows: Vec<serde_json::Value> = metric_lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series = |key: &str| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?))).collect()
    };
    plot::curves(
        &[("LOSS", series("loss")), ("REWARD", series("reward_mean")), ("KL", series("kl")), ("MMD2", series("mmd2"))],
        path,
    )
}

/// Wait for the checkpoint of `step` (rank 0 saves it) and tell every rank whether it is safe.
pub(crate) fn stop_with_checkpoint<S>(
    saver: Option<&mut Saver>,
    step: usize,
    comm: &dyn Collective,
) -> Result<Outcome<S>, JobError> {
    let saved = match saver {
        Some(saver) => saver.flush(),
        None if comm.rank() == 0 => Err("no checkpoint store (checkpoint.every = 0 and --resume none)".into()),
        None => Ok(()),
    };
    let mut ok = [u8::from(saved.is_ok())];
    comm.broadcast(&mut ok, 0)?;
    match saved {
        Err(reason) => Err(JobError::StopUnsaved { step, reason }),
        Ok(()) if ok[0] == 0 => Err(JobError::StopUnsaved { step, reason: "rank 0 could not save it".into() }),
        Ok(()) => {
            tracing::warn!(step, "stopped on request; checkpoint saved, `--resume auto` continues from here");
            Ok(Outcome::Stopped { step })
        }
    }
}
