//! Checkpoints on object storage: a local directory (a plain path or `file://` URL) or any
//! S3-compatible service (`s3://bucket/prefix`, configured by the standard `AWS_*` variables).
//!
//! A checkpoint is a set of parts under `<prefix>/step-<step>/<attempt>/` plus
//! `<prefix>/step-<step>/manifest.json`, which lists
//! every part with its size and SHA-256 and is written **last** with a conditional create: a
//! checkpoint without a valid manifest does not exist, and one whose parts do not match their
//! manifest is skipped with a warning, so the previous one is used.

mod store;

pub use store::{StorageError, Store, DEFAULT_PART_SIZE};

use serde::{Deserialize, Serialize};

/// One part of a checkpoint as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The part's logical name (`model.safetensors`, …).
    pub name: String,
    /// Where it is stored, relative to the step folder: `<attempt>/<name>`. Each save writes
    /// into its own attempt folder, so a second save of the same step can never overwrite the
    /// parts that an existing manifest points at.
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// The manifest: what a complete checkpoint holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this layout.
    pub version: u32,
    /// The training step the checkpoint resumes after.
    pub step: u64,
    /// Hash of the resolved configuration that produced it.
    pub config_hash: String,
    pub parts: Vec<Part>,
    /// Free-form facts for humans and tools (world size, wall time, metrics so far…).
    #[serde(default)]
    pub meta: serde_json::Value,
}

pub const MANIFEST: &str = "manifest.json";
pub const LAYOUT_VERSION: u32 = 1;

/// The folder of step `step`: zero-padded so that names sort by step.
pub fn step_dir(step: u64) -> String {
    format!("step-{step:012}")
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
