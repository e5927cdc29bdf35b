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
    /// The device failed while the job ran (out of memory, a faulted kernel): nothing of that
    /// work is saved, and the checkpoints already in the store stay.
    #[error("the device failed {during}: {error}\n{}", device_hint(error))]
    DeviceFailed { during: String, error: crate::tensors::DeviceError },
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
            crate::step::StepError::Device(error) => JobError::DeviceFailed { during: "in a step".into(), error },
        }
    }
}

impl JobError {
    /// [`From<StepError>`](JobError::from), naming the step that failed.
    pub fn in_step(e: crate::step::StepError, step: usize) -> Self {
        match e {
            crate::step::StepError::Device(error) => {
                JobError::DeviceFailed { during: format!("in step {step}"), error }
            }
            e => e.into(),
        }
    }

    /// A device failure [`DeviceFailed`](JobError::DeviceFailed) `during` something.
    pub fn device(during: impl Into<String>) -> impl FnOnce(crate::tensors::DeviceError) -> Self {
        let during = during.into();
        move |error| JobError::DeviceFailed { during, error }
    }
}

/// What to do about a device failure: memory is the user's to trade; a fault is not.
fn device_hint(e: &crate::tensors::DeviceError) -> &'static str {
    if e.out_of_memory() {
        "The GPU ran out of memory. The job stops without saving this step; the last good checkpoint is kept. \
         Fewer rows at once need less: lower t2i.micro_batch, turn on t2i.gradient_checkpointing and \
         t2i.decoder_checkpointing, or spread fav.batch over more GPUs (ranks)."
    } else {
        "The job stops without saving this step; the last good checkpoint is kept. A kernel that faulted leaves \
         the GPU unusable to this process: resume in a new one (the same command)."
    }
}

/// A run-directory error naming the file.
pub fn dir_err(path: &Path, e: impl ToString) -> JobError {
    JobError::RunDir { path: path.to_path_buf(), reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::StepError;
    use crate::tensors::DeviceError;

    #[test]
    fn device_failures_name_where_and_what_to_do() {
        // cubecl's words for a full GPU, as burn's ExecutionError carries them to a readback.
        let oom = "An error happened during execution\nCaused by:\n  The bytes were never written (failure #3, \
                   still claiming 2 buffer(s))\nCaused by:\n  An IO error happened\nCaused by:\n  out of device \
                   memory allocating 4294967296 bytes";
        let e = JobError::in_step(StepError::Device(DeviceError(oom.into())), 12).to_string();
        assert!(e.starts_with("the device failed in step 12: "), "{e}");
        assert!(e.contains("ran out of memory") && e.contains("t2i.micro_batch") && e.contains("last good"), "{e}");
        // A faulted kernel is not the user's memory to trade.
        let fault = DeviceError("The device is poisoned\nCaused by:\n  an illegal memory access".into());
        let e = JobError::device("evaluating at step 5")(fault).to_string();
        assert!(e.starts_with("the device failed evaluating at step 5") && e.contains("resume in a new one"), "{e}");
        assert!(!e.contains("t2i.micro_batch"), "{e}");
        // The other step errors keep their own words.
        let e = JobError::in_step(StepError::NonFinite { what: "field", step: 3 }, 3).to_string();
        assert!(e.starts_with("non-finite field at step 3"), "{e}");
    }
}
