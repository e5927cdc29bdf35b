//! Helpers shared by the port tests.

use std::path::Path;

/// A full-size checkpoint's manifest (written by the fixture scripts on the meta device): its
/// config as JSON text and its tensors' names and shapes.
pub fn manifest(path: &Path) -> (String, Vec<(String, Vec<usize>)>) {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tensors = m["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, s)| (n.clone(), s.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
        .collect();
    (m["config"].to_string(), tensors)
}

/// This crate's folder: `FAV_TRAINER_DIR` where the tests run from a copied tree (the GPU check,
/// `scripts/gpu-check/run.sh`), else where it was built.
pub fn crate_dir() -> std::path::PathBuf {
    std::env::var_os("FAV_TRAINER_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}
