//! The store: opening a URL, writing a checkpoint (parts, then the manifest), finding and
//! verifying the latest one, pruning old ones.

use crate::{sha256_hex, step_dir, Manifest, Part, LAYOUT_VERSION, MANIFEST};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    ClientOptions, MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("checkpoint store {url}: {reason}")]
    Open { url: String, reason: String },
    #[error("checkpoint store {url}: {op} {path}: {reason}")]
    Io { url: String, op: &'static str, path: String, reason: String },
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("checkpoint store {url}: no object {path}")]
    Missing { url: String, path: String },
}

impl StorageError {
    /// The store is full (a local disk with no space left): retrying does not help.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StorageError::Io { reason, .. } if reason.contains("No space left") || reason.contains("os error 28"))
    }
}

/// A checkpoint store rooted at a prefix.
pub struct Store {
    os: Arc<dyn ObjectStore>,
    root: Path,
    /// The URL as shown to people: never with credentials.
    url: String,
    /// Multipart part size for large parts.
    part_size: usize,
    /// The directory, for a local store: emptied step folders are removed (S3 has no folders).
    local_dir: Option<std::path::PathBuf>,
    /// S3's low-level multipart API: every upload is known by its id, so one that fails or is
    /// cancelled (a save that timed out) can be aborted instead of lingering on the server.
    multipart: Option<Arc<dyn MultipartStore>>,
    /// Uploads that failed and could not be aborted yet (the server was down); aborting them is
    /// retried before each write and by [`Store::abort_orphans`].
    orphans: Arc<Mutex<Vec<(Path, MultipartId)>>>,
    /// Checkpoints (`<step dir>/<attempt>`) this process wrote or verified in full: their objects
    /// never change, so pruning need not hash them again.
    verified: Mutex<HashSet<String>>,
}

/// Default multipart part size (S3 needs ≥ 5 MiB for all but the last part).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts in flight per upload. Parts are slices of the checkpoint's bytes (no copies), so this
/// bounds connections and the transport's buffers, not a growing queue.
const MAX_CONCURRENT_PARTS: usize = 4;
/// How long aborting one failed upload may take before it is left for the next attempt.
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// Open `url`: a plain path or `file://` URL (created if missing), or `s3://bucket/prefix`.
    /// S3 reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`
    /// (or `AWS_ENDPOINT`) and `AWS_ALLOW_HTTP`. Requests time out instead of hanging: a server
    /// that stops answering costs at most a few retries of `request_timeout`.
    pub fn open(url: &str, part_size: usize) -> Result<Self, StorageError> {
        let open_err = |reason: String| StorageError::Open { url: url.to_string(), reason };
        if part_size < 5 << 20 {
            return Err(open_err(format!("part size {part_size} is below the 5 MiB S3 minimum")));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(open_err("no bucket name".into()));
            }
            // Without explicit credentials object_store would probe the EC2 instance-metadata
            // service; say what is missing instead.
            for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
                if std::env::var(var).map_or(true, |v| v.is_empty()) {
                    return Err(open_err(format!("{var} is not set (S3 credentials come from the AWS_* variables)")));
                }
            }
            // A server that hangs (accepts, never answers) costs one request timeout per retry,
            // not object_store's default budget of minutes.
            let client = ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(30))
                .with_allow_http(std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1"));
            let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(60), ..Default::default() };
            let mut b =
                AmazonS3Builder::from_env().with_bucket_name(bucket).with_client_options(client).with_retry(retry);
            if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL") {
                b = b.with_endpoint(ep).with_virtual_hosted_style_request(false);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                b = b.with_region("us-east-1");
            }
            let os = Arc::new(b.build().map_err(|e| open_err(e.to_string()))?);
            return Ok(Self {
                os: os.clone(),
                root: Path::from(prefix),
                url: url.to_string(),
                part_size,
                local_dir: None,
                multipart: Some(os),
                orphans: Arc::default(),
                verified: Mutex::default(),
            });
        }
        let dir = match url.strip_prefix("file://") {
            Some(p) => std::path::PathBuf::from(p),
            None if url.contains("://") => {
                return Err(open_err("unsupported scheme (use a path, file:// or s3://)".into()));
            }
            None => std::path::PathBuf::from(url),
        };
        std::fs::create_dir_all(&dir).map_err(|e| open_err(e.to_string()))?;
        let os = LocalFileSystem::new_with_prefix(&dir).map_err(|e| open_err(e.to_string()))?;
        // A local multipart upload is a staging file that object_store removes on abort or drop.
        Ok(Self {
            os: Arc::new(os),
            root: Path::default(),
            url: url.to_string(),
            part_size,
            local_dir: Some(dir),
            multipart: None,
            orphans: Arc::default(),
            verified: Mutex::default(),
        })
    }

    /// The underlying object store (benchmarks compare against raw calls on it).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.os.clone()
    }

    /// The full key of `rel` under this store's prefix.
    pub fn key(&self, rel: &str) -> Path {
        self.path(rel)
    }

    /// The store's URL, safe to log.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for seg in rel.split('/') {
            p = p.join(seg);
        }
        p
    }

    fn io(&self, op: &'static str, path: &Path, e: impl std::fmt::Display) -> StorageError {
        StorageError::Io { url: self.url.clone(), op, path: path.to_string(), reason: e.to_string() }
    }

    /// Fail now (not at the first save) when the store cannot be listed: a missing bucket, bad
    /// credentials or an unreachable server.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.os.list_with_delimiter(Some(&self.root)).await.map_err(|e| self.io("list", &self.root, e))?;
        Ok(())
    }

    /// Upload one part: a single put when small, a multipart upload otherwise (aborted on
    /// failure or cancellation, so no upload is left behind).
    async fn put_part(&self, path: &Path, data: &Bytes) -> Result<(), StorageError> {
        if data.len() <= self.part_size {
            self.os.put(path, PutPayload::from(data.clone())).await.map_err(|e| self.io("put", path, e))?;
            return Ok(());
        }
        match &self.multipart {
            Some(mp) => self.put_multipart_tracked(mp, path, data).await,
            None => self.put_multipart_local(path, data).await,
        }
    }

    /// S3: create, `MAX_CONCURRENT_PARTS` parts in flight (zero-copy slices of `data`), complete.
    async fn put_multipart_tracked(
        &self,
        mp: &Arc<dyn MultipartStore>,
        path: &Path,
        data: &Bytes,
    ) -> Result<(), StorageError> {
        use futures::StreamExt;
        let id = mp.create_multipart(path).await.map_err(|e| self.io("start multipart upload", path, e))?;
        // Until disarmed, dropping the guard (an error below, or the caller's timeout cancelling
        // this future) records the upload as an orphan to abort.
        let guard = OrphanGuard { orphans: self.orphans.clone(), upload: Some((path.clone(), id.clone())) };
        let chunks = (0..data.len()).step_by(self.part_size).enumerate().map(|(i, start)| {
            let part = data.slice(start..(start + self.part_size).min(data.len()));
            mp.put_part(path, &id, i, PutPayload::from(part))
        });
        let done = async {
            let ids: Vec<_> = futures::stream::iter(chunks).buffered(MAX_CONCURRENT_PARTS).try_collect().await?;
            mp.complete_multipart(path, &id, ids).await
        }
        .await;
        match done {
            Ok(_) => {
                guard.disarm();
                Ok(())
            }
            Err(e) => {
                drop(guard);
                self.abort_orphans().await;
                Err(self.io("multipart upload", path, e))
            }
        }
    }

    /// Local directory: object_store's own writer (a staging file, removed on failure).
    async fn put_multipart_local(&self, path: &Path, data: &Bytes) -> Result<(), StorageError> {
        let upload = self.os.put_multipart(path).await.map_err(|e| self.io("start multipart upload", path, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        for chunk in data.chunks(self.part_size) {
            if let Err(e) = w.wait_for_capacity(MAX_CONCURRENT_PARTS).await {
                let _ = w.abort().await;
                return Err(self.io("multipart upload", path, e));
            }
            w.write(chunk);
        }
        w.finish().await.map_err(|e| self.io("finish multipart upload", path, e))?;
        Ok(())
    }

    /// Abort every upload recorded as an orphan; those the server does not take (still down)
    /// stay recorded. Returns how many remain.
    pub async fn abort_orphans(&self) -> usize {
        let Some(mp) = &self.multipart else { return 0 };
        let pending = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()));
        let mut left = Vec::new();
        for (path, id) in pending {
            match tokio::time::timeout(ABORT_TIMEOUT, mp.abort_multipart(&path, &id)).await {
                Ok(Ok(())) => tracing::debug!(%path, "aborted an unfinished multipart upload"),
                Ok(Err(e)) => {
                    tracing::warn!(%path, "aborting an unfinished multipart upload failed, will retry: {e}");
                    left.push((path, id));
                }
                Err(_) => {
                    tracing::warn!(%path, "aborting an unfinished multipart upload timed out, will retry");
                    left.push((path, id));
                }
            }
        }
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        orphans.extend(left);
        orphans.len()
    }

    /// Write checkpoint `step`: every part into a fresh attempt folder, then the manifest with a
    /// conditional create. When the step already holds an intact checkpoint (it was saved before,
    /// or another writer won), that one is kept and this attempt's parts are deleted again; a
    /// damaged one (a part missing, cut short or changed; an unreadable manifest) is deleted and
    /// replaced. A failed attempt leaves no parts behind.
    pub async fn write(
        &self,
        step: u64,
        config_hash: &str,
        parts: Vec<(String, Bytes)>,
        meta: serde_json::Value,
    ) -> Result<Manifest, StorageError> {
        self.abort_orphans().await;
        match self.read(step).await {
            Ok((existing, _)) => {
                tracing::warn!(step, "checkpoint {} already exists; keeping it", step_dir(step));
                return Ok(existing);
            }
            Err(e @ StorageError::Corrupt { .. }) => {
                tracing::warn!(step, "replacing a damaged checkpoint: {e}");
                self.delete_step(step).await?;
            }
            Err(StorageError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
        let dir = step_dir(step);
        let attempt = attempt_id();
        let written = self.write_attempt(step, &attempt, config_hash, parts, meta).await;
        let manifest = match written {
            Ok(m) => m,
            Err(e) => {
                // No half-written attempt folder stays behind (a full disk, a dropped server).
                let prefix = self.path(&format!("{dir}/{attempt}"));
                if let Ok(objects) = self.os.list(Some(&prefix)).try_collect::<Vec<_>>().await {
                    for o in objects {
                        let _ = self.os.delete(&o.location).await;
                    }
                }
                self.remove_empty_dir(step);
                return Err(e);
            }
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        let path = self.path(&format!("{dir}/{MANIFEST}"));
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.os.put_opts(&path, PutPayload::from(body), opts).await {
            Ok(_) => {
                self.remember_verified(step, &manifest);
                Ok(manifest)
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                tracing::warn!(step, "another writer saved {dir} first; keeping its checkpoint");
                for p in &manifest.parts {
                    let _ = self.os.delete(&self.path(&format!("{dir}/{}", p.key))).await;
                }
                self.read_manifest(step).await
            }
            Err(e) => Err(self.io("put", &path, e)),
        }
    }

    /// The parts of one save attempt and the manifest that lists them (not yet written).
    async fn write_attempt(
        &self,
        step: u64,
        attempt: &str,
        config_hash: &str,
        parts: Vec<(String, Bytes)>,
        meta: serde_json::Value,
    ) -> Result<Manifest, StorageError> {
        let dir = step_dir(step);
        let mut listed = Vec::with_capacity(parts.len());
        for (name, data) in &parts {
            if name.is_empty() || name.contains('/') || name == MANIFEST {
                return Err(self.io("put", &self.path(&dir), format!("invalid part name {name:?}")));
            }
            let key = format!("{attempt}/{name}");
            // Hash on a blocking thread while the bytes go up.
            let to_hash = data.clone();
            let hashing = tokio::task::spawn_blocking(move || sha256_hex(&to_hash));
            self.put_part(&self.path(&format!("{dir}/{key}")), data).await?;
            let sha256 = hashing.await.map_err(|e| self.io("hash", &self.path(&dir), e))?;
            listed.push(Part { name: name.clone(), key, size: data.len() as u64, sha256 });
        }
        Ok(Manifest { version: LAYOUT_VERSION, step, config_hash: config_hash.to_string(), parts: listed, meta })
    }

    /// `step`'s checkpoint, intact (parts match the manifest): remembered, not hashed again.
    fn remember_verified(&self, step: u64, m: &Manifest) {
        let attempt = m.parts.first().map_or("", |p| p.key.split('/').next().unwrap_or(""));
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(format!("{}/{attempt}", step_dir(step)));
    }

    fn is_verified(&self, step: u64, m: &Manifest) -> bool {
        let attempt = m.parts.first().map_or("", |p| p.key.split('/').next().unwrap_or(""));
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).contains(&format!("{}/{attempt}", step_dir(step)))
    }

    /// Delete every object of `step`, the manifest first (a half-deleted folder is never taken
    /// for complete).
    async fn delete_step(&self, step: u64) -> Result<(), StorageError> {
        let prefix = self.path(&step_dir(step));
        let objects: Vec<_> =
            self.os.list(Some(&prefix)).try_collect().await.map_err(|e| self.io("list", &prefix, e))?;
        let (manifests, others): (Vec<_>, Vec<_>) =
            objects.into_iter().partition(|o| o.location.filename() == Some(MANIFEST));
        for o in manifests.into_iter().chain(others) {
            self.os.delete(&o.location).await.map_err(|e| self.io("delete", &o.location, e))?;
        }
        self.remove_empty_dir(step);
        Ok(())
    }

    /// A local store keeps emptied folders; remove them (S3 has no folders).
    fn remove_empty_dir(&self, step: u64) {
        if let Some(dir) = &self.local_dir {
            let d = dir.join(step_dir(step));
            // Attempt folders first, then the step folder; only empty ones go.
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }

    /// Steps that have objects in the store, complete or not, newest first. (Emptied folders
    /// linger on filesystem-backed stores, local or server; they do not count.)
    pub async fn steps(&self) -> Result<Vec<u64>, StorageError> {
        let list = self.os.list_with_delimiter(Some(&self.root)).await.map_err(|e| self.io("list", &self.root, e))?;
        let mut steps = Vec::new();
        for prefix in &list.common_prefixes {
            let Some(step) = prefix.filename().and_then(|f| f.strip_prefix("step-")).and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let first = self.os.list(Some(prefix)).try_next().await.map_err(|e| self.io("list", prefix, e))?;
            if first.is_some() {
                steps.push(step);
            }
        }
        steps.sort_unstable_by(|a: &u64, b| b.cmp(a));
        Ok(steps)
    }

    /// The whole object at `path`.
    async fn get(&self, path: &Path) -> Result<Bytes, StorageError> {
        let res = self.os.get(path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                StorageError::Missing { url: self.url.clone(), path: path.to_string() }
            }
            e => self.io("get", path, e),
        })?;
        res.bytes().await.map_err(|e| self.io("get", path, e))
    }

    /// The manifest of `step`, parsed and checked against its folder name.
    pub async fn read_manifest(&self, step: u64) -> Result<Manifest, StorageError> {
        let path = self.path(&format!("{}/{MANIFEST}", step_dir(step)));
        let bytes = self.get(&path).await?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| StorageError::Corrupt { path: path.to_string(), reason: format!("manifest: {e}") })?;
        if m.step != step || m.version != LAYOUT_VERSION {
            let reason = format!("manifest says step {} layout {} in folder of step {step}", m.step, m.version);
            return Err(StorageError::Corrupt { path: path.to_string(), reason });
        }
        Ok(m)
    }

    /// Every part of checkpoint `step`, each checked against the manifest's size and SHA-256.
    pub async fn read(&self, step: u64) -> Result<(Manifest, HashMap<String, Bytes>), StorageError> {
        let m = self.read_manifest(step).await?;
        let mut parts = HashMap::new();
        for p in &m.parts {
            if p.key.split('/').any(|seg| seg.is_empty() || seg == "..") {
                let path = self.path(&step_dir(step)).to_string();
                return Err(StorageError::Corrupt { path, reason: format!("bad part key {:?}", p.key) });
            }
            let path = self.path(&format!("{}/{}", step_dir(step), p.key));
            let data = self.get(&path).await.map_err(|e| match e {
                StorageError::Missing { .. } => {
                    StorageError::Corrupt { path: path.to_string(), reason: "part missing".into() }
                }
                e => e,
            })?;
            if data.len() as u64 != p.size {
                let reason = format!("{} bytes, the manifest says {}", data.len(), p.size);
                return Err(StorageError::Corrupt { path: path.to_string(), reason });
            }
            if sha256_hex(&data) != p.sha256 {
                return Err(StorageError::Corrupt { path: path.to_string(), reason: "SHA-256 mismatch".into() });
            }
            parts.insert(p.name.clone(), data);
        }
        self.remember_verified(step, &m);
        Ok((m, parts))
    }

    /// The newest checkpoint that is complete and intact; corrupt or incomplete ones are skipped
    /// with a warning. `Ok(None)` when there is none.
    pub async fn latest(&self) -> Result<Option<(Manifest, HashMap<String, Bytes>)>, StorageError> {
        for step in self.steps().await? {
            match self.read(step).await {
                Ok(found) => return Ok(Some(found)),
                Err(e @ StorageError::Corrupt { .. }) => tracing::warn!("skipping checkpoint: {e}"),
                Err(StorageError::Missing { .. }) => {
                    tracing::debug!(step, "no manifest: an incomplete or in-progress checkpoint")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Keep the newest `keep` intact checkpoints (at least one) and delete the rest: older
    /// intact ones, damaged ones (a manifest whose parts do not match it: they never count as
    /// kept), and folders without a manifest older than the newest intact checkpoint. Folders
    /// without a manifest newer than that may be uploads in progress and are left alone.
    /// Checkpoints are verified in full once per process (their objects never change after).
    pub async fn prune(&self, keep: usize) -> Result<Vec<u64>, StorageError> {
        let steps = self.steps().await?;
        let mut intact = Vec::new();
        let mut doomed = Vec::new();
        for &s in &steps {
            match self.read_manifest(s).await {
                Ok(m) if self.is_verified(s, &m) => intact.push(s),
                Ok(_) => match self.read(s).await {
                    Ok(_) => intact.push(s),
                    Err(e @ StorageError::Corrupt { .. }) => {
                        tracing::warn!("deleting a damaged checkpoint: {e}");
                        doomed.push(s);
                    }
                    Err(e) => return Err(e),
                },
                Err(e @ StorageError::Corrupt { .. }) => {
                    tracing::warn!("deleting a damaged checkpoint: {e}");
                    doomed.push(s);
                }
                Err(_) => {}
            }
        }
        let Some(&newest) = intact.first() else { return Ok(Vec::new()) };
        let kept: Vec<u64> = intact.iter().copied().take(keep.max(1)).collect();
        let mut deleted = Vec::new();
        for s in steps {
            if !doomed.contains(&s) && (s > newest || kept.contains(&s)) {
                continue;
            }
            self.delete_step(s).await?;
            deleted.push(s);
        }
        Ok(deleted)
    }

    /// Whether any checkpoint (intact or not) is in the store: a fresh run must not mix with it.
    pub async fn any_checkpoint(&self) -> Result<Option<u64>, StorageError> {
        for step in self.steps().await? {
            match self.read_manifest(step).await {
                Ok(_) | Err(StorageError::Corrupt { .. }) => return Ok(Some(step)),
                Err(StorageError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// Records a multipart upload as an orphan unless disarmed once the upload completed.
struct OrphanGuard {
    orphans: Arc<Mutex<Vec<(Path, MultipartId)>>>,
    upload: Option<(Path, MultipartId)>,
}

impl OrphanGuard {
    fn disarm(mut self) {
        self.upload = None;
    }
}

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.orphans.lock().unwrap_or_else(|p| p.into_inner()).push(upload);
        }
    }
}

/// A name for one save attempt, unique across processes and time.
fn attempt_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let id = sha256_hex(format!("{nanos}-{}-{:p}", std::process::id(), &nanos).as_bytes());
    format!("a{}", &id[..12])
}
