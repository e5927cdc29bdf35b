//! Image alignment pieces: the procedural dataset, the JPEG rewards and the learned reward.

pub mod encoder;
pub mod jpeg;
pub mod shapes;
