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
    ApplyResult, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::TensorData;
use regex::Regex;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot write weights to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot load weights from {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

/// How a file's tensor names and layouts map onto a module: per file tensor, in this order,
/// dropped if `ignore`d, reshaped (`split`, `transpose`, `squeeze`), then renamed.
#[derive(Clone, Debug, Default)]
pub struct NameMap {
    /// `(regex, replacement)` pairs applied in order to every file tensor's name.
    renames: Vec<(String, String)>,
    /// File tensors matching these are not the module's (another tower, a training buffer).
    ignore: Vec<String>,
    /// `(regex, replacements)`: the tensor is split along its first axis into equal parts named
    /// by the replacements (a packed q/k/v projection into three).
    split: Vec<(String, Vec<String>)>,
    /// 2-D tensors matching these are transposed (a matrix a checkpoint applies as `x @ P`
    /// where the module has a linear layer).
    transpose: Vec<String>,
    /// Tensors matching these lose their leading size-1 axes (`[1, 1, w]` → `[w]`).
    squeeze: Vec<String>,
    /// The file stores linear weights as PyTorch does (`[out, in]`; norms as `weight`/`bias`):
    /// transpose and rename them into burn's layout.
    pytorch_layout: bool,
    /// The file holds only some of the module's tensors (adapters onto a loaded base): module
    /// tensors it lacks keep their values; every file tensor must still fit.
    partial: bool,
}

impl NameMap {
    /// Rename file tensors matching the regex `from` to `to` (`$1`… refer to its groups).
    pub fn rename(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.renames.push((from.into(), to.into()));
        self
    }

    /// Leave out file tensors matching the regex `pattern`.
    pub fn ignore(mut self, pattern: impl Into<String>) -> Self {
        self.ignore.push(pattern.into());
        self
    }

    /// Split file tensors matching `from` along their first axis into `into.len()` equal parts,
    /// named by the replacements `into` (`$1`… refer to `from`'s groups).
    pub fn split(mut self, from: impl Into<String>, into: &[&str]) -> Self {
        self.split.push((from.into(), into.iter().map(|s| s.to_string()).collect()));
        self
    }

    /// Transpose the 2-D file tensors matching `pattern`.
    pub fn transpose(mut self, pattern: impl Into<String>) -> Self {
        self.transpose.push(pattern.into());
        self
    }

    /// Drop the leading size-1 axes of file tensors matching `pattern`.
    pub fn squeeze(mut self, pattern: impl Into<String>) -> Self {
        self.squeeze.push(pattern.into());
        self
    }

    /// The file holds only some of the module's tensors (adapters for a loaded base).
    pub fn partial(mut self) -> Self {
        self.partial = true;
        self
    }

    /// The file is in PyTorch's layout (a transformers / diffusers / open_clip checkpoint).
    pub fn pytorch_layout(mut self) -> Self {
        self.pytorch_layout = true;
        self
    }
}

/// A file tensor as f32 data with its name.
type Named = (String, TensorData);

/// A name map's patterns, compiled once per load and anchored to the whole name.
struct Rules {
    /// Unanchored, applied in order to every name (as burn-store's `KeyRemapper`).
    renames: Vec<(Regex, String)>,
    ignore: Vec<Regex>,
    split: Vec<(Regex, Vec<String>)>,
    transpose: Vec<Regex>,
    squeeze: Vec<Regex>,
}

fn anchored(p: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("bad name map pattern {p:?}: {e}"))
}

impl Rules {
    fn new(map: &NameMap) -> Result<Self, String> {
        let all = |ps: &[String]| ps.iter().map(|p| anchored(p)).collect::<Result<Vec<_>, _>>();
        let renames = map
            .renames
            .iter()
            .map(|(p, to)| Ok((Regex::new(p).map_err(|e| format!("bad name map pattern {p:?}: {e}"))?, to.clone())))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            renames,
            ignore: all(&map.ignore)?,
            split: map.split.iter().map(|(p, to)| Ok((anchored(p)?, to.clone()))).collect::<Result<_, String>>()?,
            transpose: all(&map.transpose)?,
            squeeze: all(&map.squeeze)?,
        })
    }

    fn ignores(&self, name: &str) -> bool {
        self.ignore.iter().any(|r| r.is_match(name))
    }

    /// The module path a (reshaped) file tensor name maps to.
    fn rename(&self, name: &str) -> String {
        self.renames.iter().fold(name.to_string(), |n, (r, to)| r.replace_all(&n, to.as_str()).into_owned())
    }

    /// The names and shapes `name` of `shape` becomes under the reshaping rules (what
    /// [`Rules::reshape`] does to the data).
    fn reshape_shape(&self, name: &str, shape: &[usize]) -> Result<Vec<(String, Vec<usize>)>, String> {
        if let Some((r, into)) = self.split.iter().find(|(r, _)| r.is_match(name)) {
            let parts = into.len();
            if shape.is_empty() || !shape[0].is_multiple_of(parts) {
                return Err(format!(
                    "tensor {name} of shape {shape:?} cannot be split in {parts} along its first axis"
                ));
            }
            let mut part = shape.to_vec();
            part[0] /= parts;
            return Ok(into.iter().map(|to| (r.replace(name, to.as_str()).into_owned(), part.clone())).collect());
        }
        let mut shape = shape.to_vec();
        if self.transpose.iter().any(|r| r.is_match(name)) {
            if shape.len() != 2 {
                return Err(format!("tensor {name} of shape {shape:?} is not a matrix to transpose"));
            }
            shape.reverse();
        }
        if self.squeeze.iter().any(|r| r.is_match(name)) {
            let keep = shape.iter().position(|&d| d != 1).unwrap_or(shape.len().saturating_sub(1));
            shape.drain(..keep);
        }
        Ok(vec![(name.to_string(), shape)])
    }

    /// `name` after the reshaping rules: the tensors it becomes.
    fn reshape(&self, name: String, mut data: TensorData) -> Result<Vec<Named>, String> {
        if let Some((r, into)) = self.split.iter().find(|(r, _)| r.is_match(&name)) {
            let shape = data.shape().to_vec();
            let parts = into.len();
            if shape.is_empty() || !shape[0].is_multiple_of(parts) {
                return Err(format!(
                    "tensor {name} of shape {shape:?} cannot be split in {parts} along its first axis"
                ));
            }
            let values = f32s(&name, data)?;
            let chunk = values.len() / parts;
            let mut part_shape = shape;
            part_shape[0] /= parts;
            return Ok(into
                .iter()
                .zip(values.chunks(chunk))
                .map(|(to, part)| {
                    (r.replace(&name, to.as_str()).into_owned(), TensorData::new(part.to_vec(), part_shape.clone()))
                })
                .collect());
        }
        if self.transpose.iter().any(|r| r.is_match(&name)) {
            let shape = data.shape().to_vec();
            if shape.len() != 2 {
                return Err(format!("tensor {name} of shape {shape:?} is not a matrix to transpose"));
            }
            let v = f32s(&name, data)?;
            let (r, c) = (shape[0], shape[1]);
            let t: Vec<f32> = (0..c * r).map(|k| v[(k % r) * c + k / r]).collect();
            data = TensorData::new(t, [c, r]);
        }
        if self.squeeze.iter().any(|r| r.is_match(&name)) {
            let shape = data.shape().to_vec();
            let keep = shape.iter().position(|&d| d != 1).unwrap_or(shape.len().saturating_sub(1));
            data = TensorData::new(f32s(&name, data)?, shape[keep..].to_vec());
        }
        Ok(vec![(name, data)])
    }
}

/// A tensor's values as f32.
fn f32s(name: &str, data: TensorData) -> Result<Vec<f32>, String> {
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| format!("tensor {name}: {e:?}"))
}

/// A read error naming the file.
pub fn read_err(path: &Path, reason: impl ToString) -> WeightsError {
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
pub fn load_mapped<M: Module>(module: M, path: &Path, map: &NameMap) -> Result<M, WeightsError> {
    if path.is_dir() {
        return Err(read_err(path, "is a directory, not a weights file"));
    }
    if !path.is_file() {
        return Err(read_err(path, "no such file"));
    }
    let mut map = map.clone();
    // A pickled state dict is PyTorch's own layout.
    map.pytorch_layout |= is_pytorch(path);
    apply(module, read_all(path)?, &map).map_err(|reason| read_err(path, reason))
}

/// Every tensor of a safetensors file or PyTorch checkpoint, under the file's own names (no
/// renumbering of sequence indices: a name map reads like the file).
fn read_all(path: &Path) -> Result<Vec<burn::store::burn_pack::Tensor>, WeightsError> {
    if is_pytorch(path) {
        PytorchStore::from_file(path)
            .map_indices_contiguous(false)
            .get_all_tensors()
            .map(|t| t.values().cloned().collect())
            .map_err(|e| read_err(path, e))
    } else {
        SafetensorsStore::from_file(path)
            .get_all_tensors()
            .map(|t| t.values().cloned().collect())
            .map_err(|e| read_err(path, e))
    }
}

/// The names and shapes of a weights file's tensors, in file order.
pub fn read_shapes(path: &Path) -> Result<Vec<(String, Vec<usize>)>, WeightsError> {
    if !path.is_file() {
        return Err(read_err(path, "no such file"));
    }
    Ok(read_all(path)?.into_iter().map(|t| (t.name.clone(), t.shape.to_vec())).collect())
}

/// The values (as f32) of the first tensor of `path` whose whole name matches `pattern`
/// (a scalar a model keeps beside its modules, like CLIP's logit scale); `None` if none does.
pub fn read_tensor(path: &Path, pattern: &str) -> Result<Option<Vec<f32>>, WeightsError> {
    let re = anchored(pattern).map_err(|e| read_err(path, e))?;
    let Some(t) = read_all(path)?.into_iter().find(|t| re.is_match(&t.name)) else { return Ok(None) };
    let name = t.name.clone();
    let data = burn::store::bridge::into_data(t).map_err(|e| read_err(path, format!("tensor {name}: {e}")))?;
    f32s(&name, data.convert::<f32>()).map(Some).map_err(|e| read_err(path, e))
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

/// Convert every tensor to f32, reshape and rename it as `map` says, apply the result, then
/// refuse anything that did not fit exactly.
fn apply<M: Module>(mut module: M, tensors: Vec<burn::store::burn_pack::Tensor>, map: &NameMap) -> Result<M, String> {
    let rules = Rules::new(map)?;
    let mut named = Vec::with_capacity(tensors.len());
    for t in tensors {
        if rules.ignores(&t.name) {
            continue;
        }
        let name = t.name.clone();
        let data = burn::store::bridge::into_data(t).map_err(|e| format!("tensor {name}: {e}"))?;
        named.extend(rules.reshape(name, data.convert::<f32>())?);
    }
    let tensors = named.into_iter().map(|(n, d)| burn::store::bridge::from_data(d, rules.rename(&n), None)).collect();
    let adapter: Option<Box<dyn ModuleAdapter>> = map.pytorch_layout.then(|| Box::new(PyTorchToBurnAdapter) as _);
    let mut res = module.apply(tensors, None, adapter, false);
    if map.partial {
        res.missing.clear();
    }
    refuse_misfits(&res)?;
    refuse_non_finite(&module)?;
    Ok(module)
}

/// Whether a file of tensors `file` (name, shape; no data) would load into `module` through
/// `map`: the same renaming and reshaping as [`load_mapped`], PyTorch's layout turned into
/// burn's as its adapter does (linear weights transposed, norms' `weight`/`bias` as
/// `gamma`/`beta`), compared with the module's parameter shapes without initialising them. Errs
/// naming the missing, unexpected and mis-shaped tensors — how a full-size published checkpoint's
/// manifest is checked without its gigabytes.
pub fn check_shapes<M: Module>(module: &M, file: &[(String, Vec<usize>)], map: &NameMap) -> Result<(), String> {
    let rules = Rules::new(map)?;
    let mut mapped = std::collections::BTreeMap::new();
    for (name, shape) in file.iter().filter(|(n, _)| !rules.ignores(n)) {
        for (n, s) in rules.reshape_shape(name, shape)? {
            mapped.insert(rules.rename(&n), (n, s));
        }
    }
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for (path, container, mut shape) in param_shapes(module) {
        let mut key = path.clone();
        if map.pytorch_layout {
            let (parent, leaf) = path.rsplit_once('.').unwrap_or(("", &path));
            let norm = matches!(
                container.as_str(),
                "Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:BatchNorm" | "Struct:RmsNorm"
            );
            if container == "Struct:Linear" && leaf == "weight" && shape.len() == 2 {
                shape.reverse();
            } else if norm && (leaf == "gamma" || leaf == "beta") {
                let file_leaf = if leaf == "gamma" { "weight" } else { "bias" };
                key = if parent.is_empty() { file_leaf.to_string() } else { format!("{parent}.{file_leaf}") };
                if !mapped.contains_key(&key) {
                    key = path.clone();
                }
            }
        }
        match mapped.remove(&key) {
            Some((file_name, s)) if s != shape => {
                problems.push(format!("{file_name} has shape {s:?}, the model's {path} needs {shape:?}"))
            }
            Some(_) => {}
            None => missing.push(path),
        }
    }
    if !problems.is_empty() {
        return Err(format!("{} tensor(s) do not fit the model: {}", problems.len(), problems.join("; ")));
    }
    missing_unused(missing.iter().map(String::as_str), mapped.values().map(|(n, _)| n.as_str()))
}

/// Every float parameter's module path, the type of the module holding it, and its shape,
/// without initialising a lazy parameter.
/// `(path, type of the module holding it, dims)` of every float parameter, in module order,
/// without initialising a lazy one (a full-size model's shapes cost nothing).
pub fn param_shapes<M: Module>(module: &M) -> Vec<(String, String, Vec<usize>)> {
    struct Walk {
        path: Vec<(String, String)>,
        out: Vec<(String, String, Vec<usize>)>,
    }
    impl burn::module::ModuleVisitor for Walk {
        fn enter_module(&mut self, name: &str, container: &str) {
            self.path.push((name.to_string(), container.to_string()));
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
            let path: Vec<&str> = self.path.iter().map(|(n, _)| n.as_str()).collect();
            // The type of the module the parameter is a field of.
            let container = self.path.last().map(|(_, c)| c.clone()).unwrap_or_default();
            self.out.push((path.join("."), container, p.lazy_shape().dims::<D>().to_vec()));
        }
    }
    let mut w = Walk { path: Vec::new(), out: Vec::new() };
    module.visit(&mut w);
    w.out
}

/// A weights file with NaN or infinity in it is damaged: name the first such tensor. Reading
/// the loaded values back is also where a device too small for the model says so.
fn refuse_non_finite<M: Module>(module: &M) -> Result<(), String> {
    let mut bad = None;
    crate::tensors::read_each_param(module, |path, v| {
        if bad.is_none() && !v.iter().all(|v| v.is_finite()) {
            bad = Some(format!("tensor {path} holds NaN or infinite values"));
        }
    })
    .map_err(|e| format!("the device failed loading the weights: {e}"))?;
    bad.map_or(Ok(()), Err)
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
    missing_unused(res.missing.iter().map(|(p, _)| p.as_str()), res.unused.iter().map(String::as_str))
}

/// Refuse missing module tensors and unused file tensors, naming both.
fn missing_unused<'a>(
    missing: impl ExactSizeIterator<Item = &'a str>,
    unused: impl ExactSizeIterator<Item = &'a str>,
) -> Result<(), String> {
    let mut parts = Vec::new();
    if missing.len() > 0 {
        parts.push(format!("missing tensors {}", names(missing)));
    }
    if unused.len() > 0 {
        parts.push(format!("tensors not in this model {} (wrong model family?)", names(unused)));
    }
    if parts.is_empty() {
        Ok(())
    } else {
        Err(parts.join("; "))
    }
}

/// `module`'s parameters as safetensors bytes with plain module-path names and one fixed
/// metadata entry (burn's default metadata is a hash map whose order varies between processes,
/// which would make identical weights give different bytes).
pub fn to_bytes<M: Module>(module: &M) -> Result<Vec<u8>, String> {
    // burn-store reads each parameter back with a readback that panics on a failed device. Read
    // here first: cubecl reports a failure on the first read of a buffer the failed work left
    // unwritten, so what reads once reads again.
    crate::tensors::read_each_param(module, |_, _| ()).map_err(|e| format!("the device failed: {e}"))?;
    let mut store = SafetensorsStore::from_bytes(None).clear_metadata().metadata("format", "pt");
    module.save_into(&mut store).map_err(|e| e.to_string())?;
    store.get_bytes().map_err(|e| e.to_string())
}

/// `module`'s parameters in PyTorch's layout under module-path names — the inverse of what
/// [`NameMap::pytorch_layout`] undoes: linear weights transposed to `[out, in]`, norms' `gamma` /
/// `beta` as `weight` / `bias` — for a file the defining library loads.
pub fn pytorch_tensors<M: Module>(module: &M) -> Vec<crate::lora::NamedTensor> {
    let kinds = param_shapes(module);
    let mut out = Vec::with_capacity(kinds.len());
    let mut i = 0;
    crate::tensors::each_param(module, |path, dims, t| {
        let (_, container, _) = &kinds[i];
        i += 1;
        let (parent, leaf) = path.rsplit_once('.').map_or(("", path), |(p, l)| (p, l));
        let norm = matches!(container.as_str(), "Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:RmsNorm");
        let join = |l: &str| if parent.is_empty() { l.to_string() } else { format!("{parent}.{l}") };
        let (name, shape, values) = if container == "Struct:Linear" && leaf == "weight" && dims.len() == 2 {
            let v = crate::tensors::to_vec(&t.reshape([dims[0], dims[1]]).transpose());
            (path.to_string(), vec![dims[1], dims[0]], v)
        } else if norm && (leaf == "gamma" || leaf == "beta") {
            (join(if leaf == "gamma" { "weight" } else { "bias" }), dims.to_vec(), crate::tensors::to_vec(&t))
        } else {
            (path.to_string(), dims.to_vec(), crate::tensors::to_vec(&t))
        };
        out.push((name, shape, values));
    });
    out
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
