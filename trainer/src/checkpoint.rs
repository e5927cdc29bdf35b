//! Checkpoints of an alignment run: what an exact resume needs, written in the background to a
//! [`fav_storage::Store`] while training goes on.
//!
//! Parts: `trainable.safetensors` (the parameters that train — all of a toy network, the adapters
//! of an adapted model — with their ids, so the optimiser state matches them on load), `optimizer.burnpack` (its optimiser state), `state.json` (step, seed,
//! world size, metrics so far, the config), and the task's own: the frozen models (so a resume
//! needs no cache), the weights for people and tools, and `export.json` (what `fav export`
//! hands on). Noise is a pure function of (seed, step, particle), so the step is the whole RNG
//! and sampler state.

use crate::config::Config;
use burn::module::Module;
use bytes::Bytes;
use fav_storage::{Manifest, StorageError, Store};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Steps completed: training resumes at this step.
    pub step: usize,
    pub seed: u64,
    pub world_size: usize,
    /// Lines of `metrics.jsonl` written so far.
    pub metrics: Vec<String>,
    /// Seconds of training before this checkpoint (wall time across restarts).
    pub wall_s: f64,
    pub config: Config,
}

/// What a resume restores: the state and every part by name (verified against the manifest).
pub struct Resumed {
    pub state: State,
    pub parts: std::collections::HashMap<String, Bytes>,
    pub manifest: Manifest,
}

impl Resumed {
    pub fn part(&self, name: &str) -> Result<&Bytes, CheckpointError> {
        self.parts.get(name).ok_or_else(|| {
            fmt_err(format!("checkpoint step {} has no part {name} (made by another kind of run?)", self.manifest.step))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("checkpoint: {0}")]
    Format(String),
    #[error(
        "checkpoint at step {step} was made by a different configuration (hash {found}, this run {ours}); \
         resume it with its own config, or start afresh with --resume none"
    )]
    ConfigChanged { step: u64, found: String, ours: String },
}

fn fmt_err(e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Format(e.to_string())
}

/// Hash of everything that shapes the trajectory. Keys that only say how long to run, how
/// often to evaluate or where to save may change across a resume.
pub fn config_hash(cfg: &Config) -> String {
    let mut v = serde_json::to_value(cfg).expect("config serialises");
    if let Some(o) = v.as_object_mut() {
        for k in ["steps", "eval", "checkpoint"] {
            o.remove(k);
        }
    }
    fav_storage::sha256_hex(v.to_string().as_bytes())[..16].to_string()
}

/// The trainable parameters of `m` — those that take gradients: a LoRA-adapted model's factors,
/// every weight of a toy network — by module path, with their ids in the metadata (the optimiser
/// state is keyed by them), as safetensors bytes. The frozen rest is the task's to rebuild (a
/// base read from its files), so a checkpoint of a large adapted model holds megabytes.
pub fn trainable_bytes<M: Module>(m: &M) -> Result<Bytes, CheckpointError> {
    struct Walk {
        path: Vec<String>,
        out: Vec<crate::lora::NamedTensor>,
        ids: std::collections::BTreeMap<String, u64>,
        /// The first parameter the device could not give back.
        failed: Option<String>,
    }
    impl burn::module::ModuleVisitor for Walk {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
            // The stored value, not a reparameterized one: a frozen base weight stays out.
            let t = p.base();
            if t.is_require_grad() {
                let path = self.path.join(".");
                self.ids.insert(path.clone(), p.id.val());
                match crate::tensors::read(&t) {
                    Ok(v) => self.out.push((path, t.dims().to_vec(), v)),
                    Err(e) => _ = self.failed.get_or_insert_with(|| format!("reading {path}: {e}")),
                }
            }
        }
    }
    let mut w = Walk { path: Vec::new(), out: Vec::new(), ids: Default::default(), failed: None };
    m.visit(&mut w);
    if let Some(e) = w.failed {
        return Err(fmt_err(e));
    }
    let ids = serde_json::to_string(&w.ids).map_err(fmt_err)?;
    crate::lora::tensors_bytes_with(&w.out, &[("param_ids", ids)]).map(Bytes::from).map_err(fmt_err)
}

/// Load [`trainable_bytes`] into `m`: each stored parameter takes the file's value and id, the
/// rest stays as `m` has it. A file missing one of `m`'s trainable parameters is refused.
pub fn load_trainable<M: Module>(m: M, bytes: &Bytes) -> Result<M, CheckpointError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(fmt_err)?;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(fmt_err)?;
    let ids: std::collections::BTreeMap<String, u64> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("param_ids"))
        .ok_or_else(|| fmt_err("no param_ids metadata: not a trainable-parameters part"))
        .and_then(|s| serde_json::from_str(s).map_err(fmt_err))?;
    struct Load<'a> {
        path: Vec<String>,
        st: &'a safetensors::SafeTensors<'a>,
        ids: &'a std::collections::BTreeMap<String, u64>,
        missing: Vec<String>,
    }
    impl burn::module::ModuleMapper for Load<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(
            &mut self,
            p: burn::module::Param<burn::tensor::Tensor<D>>,
        ) -> burn::module::Param<burn::tensor::Tensor<D>> {
            let path = self.path.join(".");
            let (Some(&id), Ok(view)) = (self.ids.get(&path), self.st.tensor(&path)) else {
                if p.base().is_require_grad() {
                    self.missing.push(path);
                }
                return p;
            };
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let (_, old, mapper) = p.consume();
            let data = burn::tensor::TensorData::new(values, view.shape().to_vec());
            let t = burn::tensor::Tensor::<D>::from_data(data, &old.device()).require_grad();
            burn::module::Param::from_mapped_value(burn::module::ParamId::from(id), t, mapper)
        }
    }
    let mut l = Load { path: Vec::new(), st: &st, ids: &ids, missing: Vec::new() };
    let m = m.map(&mut l);
    if !l.missing.is_empty() {
        return Err(fmt_err(format!("the checkpoint lacks trainable parameters {:?}", l.missing)));
    }
    Ok(m)
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

/// Rank 0's checkpoint store for the run in `out` (opened now, so a missing bucket or bad
/// credentials fail before any work) and the checkpoint to resume from.
pub fn open(
    cfg: &Config,
    out: &std::path::Path,
    resume: &Resume,
) -> Result<(Option<Saver>, Option<Resumed>), CheckpointError> {
    let c = &cfg.checkpoint;
    let url = if c.url.is_empty() { out.join("checkpoints").display().to_string() } else { c.url.clone() };
    let part = c.part_size_mib << 20;
    let saver =
        if c.every > 0 || *resume == Resume::Auto { Some(Saver::open(&url, part, c.keep, c.timeout_s)?) } else { None };
    if let (Resume::Fresh, Some(s)) = (resume, &saver) {
        if let Some(step) = s.any_checkpoint()? {
            return Err(fmt_err(format!(
                "checkpoint store {} already holds checkpoints (the newest at step {step}): a fresh run \
                 (--resume none) would mix with them and overwrite that run's outputs; continue it with \
                 --resume auto, or give this run its own --out or checkpoint.url",
                s.url()
            )));
        }
    }
    let resumed = match resume {
        Resume::Fresh => None,
        Resume::Auto => match &saver {
            Some(s) => s.latest(cfg)?,
            None => None,
        },
        Resume::From(from) => Some(
            Saver::open(from, part, c.keep, c.timeout_s)?
                .latest(cfg)?
                .ok_or_else(|| fmt_err(format!("no complete checkpoint in {from}")))?,
        ),
    };
    if let Some(r) = &resumed {
        tracing::info!(step = r.state.step, "resuming from checkpoint");
    }
    Ok((saver, resumed))
}

/// Saves checkpoints on a background thread pool; at most one save is in flight.
pub struct Saver {
    rt: tokio::runtime::Runtime,
    store: Arc<Store>,
    keep: usize,
    timeout: std::time::Duration,
    pending: Option<(u64, tokio::task::JoinHandle<Result<Manifest, StorageError>>)>,
}

impl Saver {
    /// Open the store and check it answers (a missing bucket or bad credentials fail here, not at
    /// the first save).
    pub fn open(url: &str, part_size: usize, keep: usize, timeout_s: u64) -> Result<Self, CheckpointError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| fmt_err(format!("tokio runtime: {e}")))?;
        let store = Arc::new(Store::open(url, part_size)?);
        let timeout = std::time::Duration::from_secs(timeout_s);
        let checked = rt.block_on(async { tokio::time::timeout(timeout, store.check()).await });
        match checked {
            Ok(r) => r?,
            Err(_) => return Err(fmt_err(format!("store {} did not answer within {timeout_s} s", store.url()))),
        }
        Ok(Self { rt, store, keep, timeout, pending: None })
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// The step of any checkpoint in the store (intact or not), if there is one.
    pub fn any_checkpoint(&self) -> Result<Option<u64>, CheckpointError> {
        Ok(self.rt.block_on(self.store.any_checkpoint())?)
    }

    /// The newest intact checkpoint, if any.
    pub fn latest(&self, cfg: &Config) -> Result<Option<Resumed>, CheckpointError> {
        let Some((manifest, parts)) = self.rt.block_on(self.store.latest())? else { return Ok(None) };
        let ours = config_hash(cfg);
        if manifest.config_hash != ours {
            return Err(CheckpointError::ConfigChanged { step: manifest.step, found: manifest.config_hash, ours });
        }
        let state = parts.get("state.json").ok_or_else(|| fmt_err("part state.json missing"))?;
        let state: State = serde_json::from_slice(state).map_err(fmt_err)?;
        Ok(Some(Resumed { state, parts, manifest }))
    }

    /// Wait for the save in flight, if any; report its outcome. A failed save is logged and
    /// training goes on: the previous checkpoint stays the latest. `Err` says why it failed.
    fn wait(&mut self) -> Result<(), String> {
        let Some((step, handle)) = self.pending.take() else { return Ok(()) };
        match self.rt.block_on(handle) {
            Ok(Ok(m)) => {
                tracing::info!(step = m.step, url = self.store.url(), "checkpoint saved");
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(step, "checkpoint upload failed, training goes on: {e}");
                Err(e.to_string())
            }
            Err(e) => {
                tracing::error!(step, "checkpoint task failed: {e}");
                Err(e.to_string())
            }
        }
    }

    /// Start saving `parts` as checkpoint `step` in the background. If the previous save is still
    /// uploading, wait for it first (and say so).
    pub fn save(&mut self, step: u64, config_hash: String, parts: Vec<(String, Bytes)>, meta: serde_json::Value) {
        if self.pending.as_ref().is_some_and(|(_, h)| !h.is_finished()) {
            let t = Instant::now();
            tracing::warn!(step, "previous checkpoint still uploading; waiting for it before saving the next");
            let _ = self.wait();
            tracing::info!(waited_s = t.elapsed().as_secs_f64(), "previous checkpoint done");
        } else {
            let _ = self.wait();
        }
        let (store, timeout, keep) = (self.store.clone(), self.timeout, self.keep);
        // The upload's log lines carry the caller's span (the rank).
        let task = save_and_prune(store, step, config_hash, parts, meta, timeout, keep);
        let handle = self.rt.spawn(tracing::Instrument::instrument(task, tracing::Span::current()));
        self.pending = Some((step, handle));
    }

    /// Block until the save in flight is done, and abort uploads that failed earlier (at exit).
    /// `Err` when that last save failed.
    pub fn flush(&mut self) -> Result<(), String> {
        let last = self.wait();
        let left = self.rt.block_on(self.store.abort_orphans());
        if left > 0 {
            tracing::warn!(
                left,
                "unfinished multipart uploads could not be aborted (server unreachable); \
                 an AbortIncompleteMultipartUpload lifecycle rule on the bucket removes them"
            );
        }
        last
    }
}

/// One background save: write the checkpoint, retrying beyond object_store's own per-request
/// retries — a server that is down for a while (restarting, failing over) gets the save again
/// after 1, 2, 4, 8 and 16 s, all within `timeout` (`checkpoint.timeout_s`), after which it is
/// given up — then prune old checkpoints, so listing and manifest reads never hold up a step.
async fn save_and_prune(
    store: Arc<Store>,
    step: u64,
    config_hash: String,
    parts: Vec<(String, Bytes)>,
    meta: serde_json::Value,
    timeout: std::time::Duration,
    keep: usize,
) -> Result<Manifest, StorageError> {
    let attempts = async {
        let mut delay = std::time::Duration::from_secs(1);
        loop {
            match store.write(step, &config_hash, parts.clone(), meta.clone()).await {
                // A full disk stays full: fail this save now (training goes on, the previous
                // checkpoint stays the latest) instead of retrying until the timeout.
                Err(e) if e.is_out_of_space() => return Err(e),
                Err(e) if delay <= std::time::Duration::from_secs(16) => {
                    tracing::warn!(step, retry_in_s = delay.as_secs(), "checkpoint upload failed: {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                done => return done,
            }
        }
    };
    let saved = tokio::time::timeout(timeout, attempts).await.map_err(|_| StorageError::Io {
        url: store.url().to_string(),
        op: "save",
        path: fav_storage::step_dir(step),
        reason: format!("gave up after checkpoint.timeout_s = {} s", timeout.as_secs()),
    })??;
    match store.prune(keep).await {
        Ok(deleted) if !deleted.is_empty() => tracing::debug!(?deleted, "old checkpoints pruned"),
        Ok(_) => {}
        Err(e) => tracing::warn!("pruning old checkpoints failed: {e}"),
    }
    Ok(saved)
}

/// What `fav export` wrote.
#[derive(Debug, Serialize)]
pub struct Exported {
    pub step: u64,
    pub files: Vec<String>,
    /// The configuration the checkpoint was made under.
    pub config: Config,
}

/// `export.json`, a task's account of its checkpoint for inference: which parts to hand on, and
/// the model and reward for the model card.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportSpec {
    /// Parts copied out under their own names.
    pub files: Vec<String>,
    pub model: serde_json::Value,
    pub reward: String,
}

impl ExportSpec {
    pub const PART: &'static str = "export.json";

    pub fn part(&self) -> (String, Bytes) {
        (Self::PART.to_string(), Bytes::from(serde_json::to_vec_pretty(self).expect("export spec serialises")))
    }
}

/// Hand a checkpoint to inference: the files its task names (the aligned weights with any
/// adapters merged, under plain module-path names; the adapters under PEFT names where LoRA is
/// used) and `model_card.json` (config, reward, β, step, metrics, source commit).
pub fn export(
    url: &str,
    step: Option<u64>,
    out: &std::path::Path,
    source_commit: &str,
) -> Result<Exported, CheckpointError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fmt_err)?;
    let store = Store::open(url, fav_storage::DEFAULT_PART_SIZE)?;
    let (manifest, parts) = match step {
        Some(s) => rt.block_on(store.read(s))?,
        None => rt.block_on(store.latest())?.ok_or_else(|| fmt_err(format!("no complete checkpoint in {url}")))?,
    };
    let part = |n: &str| {
        parts.get(n).cloned().ok_or_else(|| fmt_err(format!("checkpoint step {} has no part {n}", manifest.step)))
    };
    let state: State = serde_json::from_slice(&part("state.json")?).map_err(fmt_err)?;
    let spec: ExportSpec = serde_json::from_slice(&part(ExportSpec::PART)?).map_err(fmt_err)?;
    std::fs::create_dir_all(out).map_err(|e| fmt_err(format!("{}: {e}", out.display())))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(out.join(name), bytes).map_err(|e| fmt_err(format!("{}: {e}", out.join(name).display())))
    };
    for f in &spec.files {
        write(f, &part(f)?)?;
    }
    let c = &state.config;
    let metrics: Vec<serde_json::Value> = state.metrics.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let card = serde_json::json!({
        "format": "fav model card v1",
        "task": c.task,
        "model": spec.model,
        "reward": spec.reward,
        "beta": c.fav.beta,
        "step": manifest.step,
        "seed": state.seed,
        "world_size": state.world_size,
        "metrics": metrics,
        "config": state.config,
        "config_hash": manifest.config_hash,
        "checkpoint": { "store": store.url(), "step": manifest.step },
        "source_commit": source_commit,
    });
    write("model_card.json", &serde_json::to_vec_pretty(&card).expect("card serialises"))?;
    let mut files = spec.files;
    files.push("model_card.json".into());
    Ok(Exported { step: manifest.step, files, config: state.config })
}
