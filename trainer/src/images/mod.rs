//! Image alignment pieces: the procedural dataset and the JPEG rewards.

pub mod jpeg;
pub mod shapes;
