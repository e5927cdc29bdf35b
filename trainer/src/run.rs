//! The one run loop, for every task: rank 0 prepares the frozen models and every rank gets
//! them; resume; then per step: the data-parallel step, a digest check across ranks, the stop
//! check, evaluation and `metrics.jsonl`, checkpoints in the background; at the end the task's
//! outputs and report.

use crate::checkpoint::{self, Resume, Saver, State};
use crate::config::Config;
use crate::error::{dir_err, JobError};
use crate::observe::{due, Observer};
use crate::step::Timings;
use crate::sync;
use crate::tasks::{self, Report, RunInfo};
use bytes::Bytes;
use fav_comm::Collective;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every step ran; rank 0 has the report, the other ranks `None`.
    Finished(Option<Box<Report>>),
    /// A stop was requested (a signal); every rank stopped after `step` and its checkpoint is
    /// saved, so `--resume auto` continues from there.
    Stopped { step: usize },
    /// A stop was requested before alignment began (while a base or reward model was being
    /// trained); there was nothing to checkpoint and a rerun starts that training again.
    StoppedEarly,
}

/// Where a run happens: its peers, where it resumes from, the stop flag (set by a signal) and
/// the accelerator the launcher assigned this rank.
pub struct Env<'a> {
    pub comm: &'a dyn Collective,
    pub resume: Resume,
    pub stop: &'a AtomicBool,
    pub device_index: usize,
    /// Ranks sharing this machine's memory (this process's and its neighbours').
    pub local_ranks: usize,
}

/// Run the job of `cfg` into `out` on every rank of `env.comm`. Rank 0 prepares the frozen
/// models (and sends them to the others), evaluates, saves checkpoints and writes the run
/// directory; it returns the report, the other ranks `None`. When the stop flag is set on any
/// rank, every rank finishes the current step, rank 0 saves a checkpoint and waits for it, and
/// all return [`Outcome::Stopped`].
pub fn run_on(cfg: &Config, out: &Path, obs: &mut dyn Observer, env: &Env) -> Result<Outcome, JobError> {
    crate::validate(cfg)?;
    let (comm, stop) = (env.comm, env.stop);
    // What cannot fit the machine is refused before any work (a GPU's memory is not checked).
    let plan = crate::plan::plan(cfg, comm.size())?;
    if let (false, Some(available)) = (cfg.device.is_cuda(), crate::plan::available()) {
        plan.check(env.local_ranks, available)?;
    }
    crate::step::Layout::new(cfg.fav.batch, cfg.fav.conditions, comm.size(), comm.rank()).map_err(JobError::Layout)?;
    let t0 = Instant::now();
    let lead = comm.rank() == 0;
    let mut task = tasks::build(cfg, &crate::gpu::open(cfg, env.device_index, comm)?)?;

    let prepared = if lead {
        // The store first: a refused start (another run's checkpoints) touches nothing.
        checkpoint::open(cfg, out, &env.resume).map_err(JobError::from).and_then(|(saver, resumed)| {
            start_run_dir(cfg, out)?;
            task.prepare(resumed.as_ref(), obs, stop)?;
            Ok((saver, resumed))
        })
    } else {
        Ok((None, None))
    };
    let Some((mut saver, resumed)) = share_prepared(prepared, comm)? else { return Ok(Outcome::StoppedEarly) };
    task.start(comm)?;
    let pretrain_s = t0.elapsed().as_secs_f64();
    let mut lines = if lead { task.baseline()? } else { Vec::new() };
    let wall_before = match &resumed {
        Some(r) => {
            task.resume(r);
            lines = r.state.metrics.clone();
            r.state.wall_s
        }
        None => 0.0,
    };
    let mine = resumed
        .as_ref()
        .map(|r| Ok::<_, JobError>((r.state.step, r.part("trainable.safetensors")?, r.part("optimizer.burnpack")?)));
    let shared = sync::share_resume(comm, mine.transpose()?)?;
    let start = match &shared {
        Some((step, model, optim)) => {
            task.trainer().restore(model, optim)?;
            *step
        }
        None => 0,
    };
    let wall = || wall_before + t0.elapsed().as_secs_f64();
    let mut metrics = lead.then(|| MetricsLog::create(&out.join("metrics.jsonl"), &lines)).transpose()?;
    let hash = checkpoint::config_hash(cfg);
    let (t_align, mut timings) = (Instant::now(), Timings::default());
    obs.phase("align", cfg.steps);
    obs.progress(start, f64::NAN);
    // Every way out of the steps waits for the save under way (a good step's); a stop has.
    let mut align = || -> Result<Option<Outcome>, JobError> {
        for step in start..cfg.steps {
            let stats = task.trainer().step(step).map_err(|e| JobError::in_step(e, step))?;
            timings.add(&stats.timings);
            let done = step + 1;
            obs.progress(done, stats.loss);
            if due(done, cfg.fav.check_every, cfg.steps) {
                let digest = task.trainer().digest().map_err(JobError::device(format!("after step {step}")))?;
                sync::check_in_sync(digest, comm, done).map_err(JobError::Diverged)?;
            }
            let stopping = sync::any_rank(stop.load(Ordering::Relaxed), comm)?;
            if due(done, cfg.eval.every, cfg.steps) {
                // Rank 0 evaluates; weights whose samples score non-finite stop every rank, unsaved.
                let mut finite = true;
                if let Some(log) = metrics.as_mut() {
                    let e = task.evaluate(done, &stats, wall())?;
                    finite = e.finite;
                    if finite {
                        log.append(&e.line)?;
                        lines.push(e.line);
                        obs.eval(e.reward, &e.display);
                    }
                }
                if sync::any_rank(!finite, comm)? {
                    return Err(JobError::NonFinite { what: "evaluation", step: done });
                }
            }
            if let Some(saver) = saver.as_mut().filter(|_| stopping || due(done, cfg.checkpoint.every, cfg.steps)) {
                let (model, optimizer) = task.trainer().state()?;
                let state = State {
                    step: done,
                    seed: cfg.seed,
                    world_size: comm.size(),
                    metrics: lines.clone(),
                    wall_s: wall(),
                    config: cfg.clone(),
                };
                let mut parts = vec![
                    ("trainable.safetensors".to_string(), model),
                    ("optimizer.burnpack".to_string(), optimizer),
                    (
                        "state.json".to_string(),
                        Bytes::from(serde_json::to_vec_pretty(&state).expect("state serialises")),
                    ),
                ];
                parts.extend(task.checkpoint_parts()?);
                let meta = serde_json::json!({ "world_size": comm.size(), "task": cfg.task, "family": cfg.family() });
                saver.save(done as u64, hash.clone(), parts, meta);
            }
            if stopping {
                return stop_with_checkpoint(saver.as_mut(), done, comm).map(Some);
            }
        }
        Ok(None)
    };
    if let Some(outcome) = align().inspect_err(|_| flush(saver.as_mut()))? {
        return Ok(outcome);
    }
    flush(saver.as_mut());
    if !lead {
        return Ok(Outcome::Finished(None));
    }
    let info = RunInfo {
        steps: cfg.steps,
        world_size: comm.size(),
        wall_s: wall(),
        pretrain_s,
        align_s: t_align.elapsed().as_secs_f64(),
        step_time: timings.mean(cfg.steps - start),
        resumed_from: shared.map(|(s, _, _)| s),
    };
    let report = task.finish(out, &lines, &info)?;
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report.summary).expect("summary serialises"))
        .map_err(|e| dir_err(&path, e))?;
    Ok(Outcome::Finished(Some(Box::new(report))))
}

/// Run the whole job in this process, as rank 0 of one.
pub fn run(cfg: &Config, out: &Path, obs: &mut dyn Observer) -> Result<Report, JobError> {
    let stop = AtomicBool::new(false);
    let env =
        Env { comm: &fav_comm::SingleProcess, resume: Resume::Auto, stop: &stop, device_index: 0, local_ranks: 1 };
    match run_on(cfg, out, obs, &env)? {
        Outcome::Finished(r) => Ok(*r.expect("rank 0 has a report")),
        Outcome::Stopped { .. } | Outcome::StoppedEarly => unreachable!("nothing asks this job to stop"),
    }
}

/// Rank 0's run directory with `config.json`.
fn start_run_dir(cfg: &Config, out: &Path) -> Result<(), JobError> {
    std::fs::create_dir_all(out).map_err(|e| dir_err(out, e))?;
    let path = out.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(cfg).expect("config serialises")).map_err(|e| dir_err(&path, e))
}

/// Tell every rank how rank 0's preparation ended before they wait for its models: `Some` with
/// this rank's value when it succeeded, `None` when a signal stopped it (every rank then returns
/// [`Outcome::StoppedEarly`]), the error otherwise.
fn share_prepared<T>(prepared: Result<T, JobError>, comm: &dyn Collective) -> Result<Option<T>, JobError> {
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

/// Rank 0's `metrics.jsonl`: rewritten from a resumed checkpoint's lines, then one flushed line
/// per evaluation (a crash loses none that were logged).
struct MetricsLog {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl MetricsLog {
    fn create(path: &Path, lines: &[String]) -> Result<Self, JobError> {
        let mut file = std::fs::File::create(path).map_err(|e| dir_err(path, e))?;
        for l in lines {
            writeln!(file, "{l}").map_err(|e| dir_err(path, e))?;
        }
        Ok(Self { file, path: path.to_path_buf() })
    }

    fn append(&mut self, line: &str) -> Result<(), JobError> {
        writeln!(self.file, "{line}").and_then(|_| self.file.flush()).map_err(|e| dir_err(&self.path, e))
    }
}

/// Wait for the save under way, if any (its failure is logged by the saver).
fn flush(saver: Option<&mut Saver>) {
    if let Some(saver) = saver {
        let _ = saver.flush();
    }
}

/// Wait for the checkpoint of `step` (rank 0 saves it) and tell every rank whether it is safe.
fn stop_with_checkpoint(saver: Option<&mut Saver>, step: usize, comm: &dyn Collective) -> Result<Outcome, JobError> {
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
