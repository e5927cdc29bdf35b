//! Weights in and out: the one importer every model loads through, and the one writer.
//!
//! Import reads a safetensors file or a PyTorch checkpoint (`.pt`, `.pth`, `.bin`: a pickled
//! state dict) through burn-store, renames its tensors onto the module's paths with a
//! [`NameMap`], converts every float tensor (F16, BF16, F64 — what published checkpoints hold) to
//! float32, the module's own precision, and refuses a file that does not fit the module: a
//! missing, unexpected or mis-shaped tensor is an error naming the file and the tensors.
//!
//! Export writes safetensors named by module path (`layers.0.weight`, …) with one fixed
//! metadata entry, so identical weights give identical bytes; files are written atomically
//! (temporary file, then rename), so a crash never leaves a half-written file under the real name.

use burn::module::Module;
use burn::store::{
    ApplyResult, ChainAdapter, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot, ModuleStore,
    PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::DType;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot write weights to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot load weights from {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

/// How a file's tensor names and layouts map onto a module.
#[derive(Clone, Debug, Default)]
pub struct NameMap {
    /// `(regex, replacement)` pairs applied in order to every file tensor's name.
    renames: Vec<(String, String)>,
    /// The file stores linear weights as PyTorch does (`[out, in]`; norms as `weight`/`bias`):
    /// transpose and rename them into burn's layout.
    pytorch_layout: bool,
}

impl NameMap {
    /// Rename file tensors matching the regex `from` to `to` (`$1`… refer to its groups).
    pub fn rename(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.renames.push((from.into(), to.into()));
        self
    }

    /// The file is in PyTorch's layout (a transformers / diffusers / open_clip checkpoint).
    pub fn pytorch_layout(mut self) -> Self {
        self.pytorch_layout = true;
        self
    }
}

fn read_err(path: &Path, reason: impl ToString) -> WeightsError {
    WeightsError::Read { path: path.to_path_buf(), reason: reason.to_string() }
}

/// A PyTorch checkpoint rather than safetensors, by extension.
fn is_pytorch(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("pt" | "pth" | "bin" | "ckpt"))
}

/// Load `path` into `module` under its own names (files this project wrote).
pub fn load<M: Module>(module: M, path: &Path) -> Result<M, WeightsError> {
    load_mapped(module, path, &NameMap::default())
}

/// Load `path` (safetensors or a PyTorch checkpoint) into `module` through `map`.
pub fn load_mapped<M: Module>(mut module: M, path: &Path, map: &NameMap) -> Result<M, WeightsError> {
    if path.is_dir() {
        return Err(read_err(path, "is a directory, not a weights file"));
    }
    if !path.is_file() {
        return Err(read_err(path, "no such file"));
    }
    if is_pytorch(path) {
        // A pickled state dict is PyTorch's own layout; burn-store's PyTorch reader transposes
        // linear weights and widens half-precision tensors itself. Names are the file's own
        // (no renumbering of sequence indices), so a name map reads like the checkpoint.
        let remapper = KeyRemapper::from_patterns(map.renames.clone())
            .map_err(|e| read_err(path, format!("bad name map: {e}")))?;
        let mut store = PytorchStore::from_file(path)
            .remap(remapper)
            .map_indices_contiguous(false)
            .allow_partial(true)
            .validate(false);
        let res = module.load_from(&mut store).map_err(|e| read_err(path, e))?;
        refuse_misfits(&res).and_then(|_| refuse_non_finite(&module)).map_err(|reason| read_err(path, reason))?;
        return Ok(module);
    }
    let tensors = SafetensorsStore::from_file(path)
        .get_all_tensors()
        .map(|t| t.values().cloned().collect())
        .map_err(|e| read_err(path, e))?;
    apply(module, tensors, map).map_err(|reason| read_err(path, reason))
}

/// Load safetensors `bytes` (a checkpoint part, a broadcast) into `module` under its own names;
/// errors name `what`.
pub fn from_bytes<M: Module>(module: M, bytes: &[u8], what: &str) -> Result<M, WeightsError> {
    let path = PathBuf::from(what);
    let tensors = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
        .get_all_tensors()
        .map(|t| t.values().cloned().collect())
        .map_err(|e| read_err(&path, e))?;
    apply(module, tensors, &NameMap::default()).map_err(|reason| read_err(&path, reason))
}

/// Rename, convert and apply `tensors`, then refuse anything that did not fit exactly.
fn apply<M: Module>(mut module: M, tensors: Vec<burn::store::burn_pack::Tensor>, map: &NameMap) -> Result<M, String> {
    let remapper = KeyRemapper::from_patterns(map.renames.clone()).map_err(|e| format!("bad name map: {e}"))?;
    let (tensors, _) = remapper.remap(tensors);
    let cast = FloatCastAdapter::to(DType::F32);
    let adapter: Box<dyn ModuleAdapter> =
        if map.pytorch_layout { Box::new(ChainAdapter::new(PyTorchToBurnAdapter, cast)) } else { Box::new(cast) };
    let res = module.apply(tensors, None, Some(adapter), false);
    refuse_misfits(&res)?;
    refuse_non_finite(&module)?;
    Ok(module)
}

/// A weights file with NaN or infinity in it is damaged: name the first such tensor.
fn refuse_non_finite<M: Module>(module: &M) -> Result<(), String> {
    let mut bad = None;
    crate::tensors::each_param(module, |path, _, t| {
        if bad.is_none() && !crate::tensors::to_vec(&t).iter().all(|v| v.is_finite()) {
            bad = Some(path.to_string());
        }
    });
    match bad {
        Some(name) => Err(format!("tensor {name} holds NaN or infinite values")),
        None => Ok(()),
    }
}

/// A short list of names for an error message.
fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = it.collect();
    let shown: Vec<&str> = all.iter().take(8).copied().collect();
    let more = all.len().saturating_sub(shown.len());
    format!("{shown:?}{}", if more > 0 { format!(" and {more} more") } else { String::new() })
}

fn refuse_misfits(res: &ApplyResult) -> Result<(), String> {
    if !res.errors.is_empty() {
        let list: Vec<String> = res.errors.iter().take(8).map(|e| e.to_string()).collect();
        return Err(format!("{} tensor(s) do not fit the model: {}", res.errors.len(), list.join("; ")));
    }
    if !res.missing.is_empty() {
        return Err(format!("missing tensors {}", names(res.missing.iter().map(|(p, _)| p.as_str()))));
    }
    if !res.unused.is_empty() {
        return Err(format!(
            "tensors not in this model {} (wrong model family?)",
            names(res.unused.iter().map(String::as_str))
        ));
    }
    Ok(())
}

/// `module`'s parameters as safetensors bytes with plain module-path names and one fixed
/// metadata entry (burn's default metadata is a hash map whose order varies between processes,
/// which would make identical weights give different bytes).
pub fn to_bytes<M: Module>(module: &M) -> Result<Vec<u8>, String> {
    let mut store = SafetensorsStore::from_bytes(None).clear_metadata().metadata("format", "pt");
    module.save_into(&mut store).map_err(|e| e.to_string())?;
    store.get_bytes().map_err(|e| e.to_string())
}

/// Write `bytes` to `path` atomically (temporary file, then rename), creating its folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path))
}

/// Save `module`'s parameters to `path` (atomically).
pub fn save<M: Module>(module: &M, path: &Path) -> Result<(), WeightsError> {
    let werr = |reason: String| WeightsError::Write { path: path.to_path_buf(), reason };
    let bytes = to_bytes(module).map_err(werr)?;
    write_atomic(path, &bytes).map_err(|e| werr(e.to_string()))
}
