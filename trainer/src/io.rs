//! Weights on disk: safetensors named by module path (`layers.0.weight`, …), written atomically
//! (temporary file, then rename) so a crash never leaves a half-written file under the real name.

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot write weights to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot load weights from {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

/// One metadata entry only: burn's default metadata is a hash map whose serialised order varies
/// between processes, which would make identical weights give different file bytes.
pub fn deterministic(store: SafetensorsStore) -> SafetensorsStore {
    store.clear_metadata().metadata("format", "pt")
}

/// Write `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path))
}

/// Save `module`'s parameters to `path` (atomically).
pub fn save<M: Module + ModuleSnapshot>(module: &M, path: &Path) -> Result<(), WeightsError> {
    let werr = |reason: String| WeightsError::Write { path: path.to_path_buf(), reason };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| werr(e.to_string()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut store = deterministic(SafetensorsStore::from_file(&tmp));
    module.save_into(&mut store).map_err(|e| werr(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| werr(e.to_string()))
}

/// Load parameters from `path` into `module`; a missing, unexpected or mis-shaped tensor is an
/// error naming it.
pub fn load<M: Module + ModuleSnapshot>(mut module: M, path: &Path) -> Result<M, WeightsError> {
    let rerr = |reason: String| WeightsError::Read { path: path.to_path_buf(), reason };
    if !path.is_file() {
        return Err(rerr("no such file".into()));
    }
    let mut store = SafetensorsStore::from_file(path).validate(true).allow_partial(false);
    let res = module.load_from(&mut store).map_err(|e| rerr(e.to_string()))?;
    if !res.errors.is_empty() {
        return Err(rerr(format!("{:?}", res.errors)));
    }
    if !res.missing.is_empty() {
        let names: Vec<_> = res.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(rerr(format!("missing tensors {names:?}")));
    }
    if !res.unused.is_empty() {
        return Err(rerr(format!("tensors not in this model {:?} (wrong model family?)", res.unused)));
    }
    Ok(module)
}
