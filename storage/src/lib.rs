//! Checkpoints on object storage (local directory or S3-compatible): filled in by the checkpoint issue.
