//! Helpers shared by the `fav` binary's integration tests.
#![allow(dead_code)] // each test file uses a subset

use std::path::{Path, PathBuf};

/// A fresh scratch directory for one test (`<tmp>/fav-<suite>-<pid>-<name>`).
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fav-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The shipped example configs.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `metrics.jsonl` of a run directory with the wall-clock field removed: what must repeat
/// exactly between runs.
pub fn metrics_without_wall(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("wall_s");
            v.to_string()
        })
        .collect()
}
