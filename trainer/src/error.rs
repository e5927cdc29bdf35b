//! How a job fails: every error names the file, key, rank or step at fault.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("run directory {path}: {reason}")]
    RunDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Layout(String),
    /// The job's GPU could not be opened on this rank or a peer ([`crate::gpu::open`]).
    #[error("{0}")]
    Device(String),
    #[error("communication: {0}")]
    Comm(#[from] fav_comm::CommError),
    #[error("rank 0 could not prepare the frozen models (see its log)")]
    PeerFailed,
    #[error("cannot share rank 0's {what}: {reason}")]
    Broadcast { what: &'static str, reason: String },
    #[error("{0}")]
    Diverged(String),
    /// The reward could not be built from its files or server (named).
    #[error("reward: {0}")]
    Reward(String),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("asked to stop at step {step}, but its checkpoint could not be saved: {reason}")]
    StopUnsaved { step: usize, reason: String },
    /// Every rank saw it: the step was refused, nothing of it was saved, and the checkpoints
    /// already in the store (the last good one) stay.
    #[error(
        "non-finite {what} at step {step}: the job stops without saving that step; the last good checkpoint \
         is kept (lower fav.lr, check the base weights and fav.temps_*, or set fav.nonfinite = \"skip\")"
    )]
    NonFinite { what: &'static str, step: usize },
    /// A stop was requested while rank 0 was still training a frozen model (base or reward
    /// model); nothing is saved, so a rerun trains it again. Becomes `Outcome::StoppedEarly`.
    #[error("stopped while training the {0}")]
    StoppedPreparing(&'static str),
}

impl From<crate::step::StepError> for JobError {
    fn from(e: crate::step::StepError) -> Self {
        match e {
            crate::step::StepError::Comm(e) => JobError::Comm(e),
            crate::step::StepError::NonFinite { what, step } => JobError::NonFinite { what, step },
        }
    }
}

/// A run-directory error naming the file.
pub fn dir_err(path: &Path, e: impl ToString) -> JobError {
    JobError::RunDir { path: path.to_path_buf(), reason: e.to_string() }
}
