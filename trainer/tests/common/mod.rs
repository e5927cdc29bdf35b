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
