//! The golden vectors (`golden.rs`) and the SANA-Sprint fixtures (`sana.rs`) in one binary, the
//! one the GPU check carries (`scripts/gpu-check/`: a `cuda` test binary links LLVM statically,
//! ~25 MB compressed each). Both run on `Device::default()`: flex in a CPU build, the GPU in a
//! `cuda` build.

#[path = "golden.rs"]
mod golden;
#[path = "sana.rs"]
mod sana;
