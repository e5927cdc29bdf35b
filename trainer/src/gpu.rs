//! Opening the job's device. burn-cuda's runtime (cubecl) unwraps the CUDA driver's answers the
//! first time it touches a GPU: on a node without the NVIDIA driver, with a driver older than the
//! build's CUDA API, with no visible GPU or fewer than the rank's index, the job would panic in
//! a runtime thread. [`open`] asks the driver first, and every rank learns whether all ranks
//! could open theirs, so a broken node ends the whole job with an error naming it and its GPU
//! instead of leaving its peers waiting in the first collective.

use crate::config::{Config, DeviceKind};
use crate::JobError;
use burn::tensor::Device;
use fav_comm::Collective;

/// The device of `cfg.device` for the rank whose launcher-assigned GPU is `index`, once every
/// rank of `comm` has opened its own (a CPU job opens nothing and exchanges nothing).
pub fn open(cfg: &Config, index: usize, comm: &dyn Collective) -> Result<Device, JobError> {
    open_kind(cfg.device, index, comm)
}

/// The device of a one-process tool (`fav sample`, `fav score`): `cuda` is the first visible GPU.
pub fn open_here(kind: DeviceKind) -> Result<Device, JobError> {
    open_kind(kind, 0, &fav_comm::SingleProcess)
}

fn open_kind(kind: DeviceKind, index: usize, comm: &dyn Collective) -> Result<Device, JobError> {
    let Some(gpu) = kind.gpu(index) else { return Ok(Device::flex()) };
    let local = check(gpu).map_err(|reason| JobError::Device(format!("device = \"cuda\" (GPU {gpu}): {reason}")));
    let failed = fav_comm::failed_ranks(comm, local.is_ok())?;
    match local {
        Err(e) => Err(e),
        Ok(()) if !failed.is_empty() => {
            Err(JobError::Device(format!("rank(s) {failed:?} could not open their GPU (see their log)")))
        }
        Ok(()) => Ok(cuda(gpu)),
    }
}

/// Why GPU `index` cannot be used, in the driver's words.
#[cfg(feature = "cuda")]
fn check(index: usize) -> Result<(), String> {
    use cudarc::driver::{result, sys};
    let visible = match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) => format!("CUDA_VISIBLE_DEVICES={v:?}"),
        Err(_) => "CUDA_VISIBLE_DEVICES unset".into(),
    };
    // SAFETY: this only tries to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Err("the NVIDIA driver (libcuda.so) is not installed on this node".into());
    }
    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int into `version`, which outlives the call; it needs
    // no cuInit and exists in every driver.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| format!("the driver's version cannot be read: {e}"))?;
    if let Some(built) = BUILT_FOR.and_then(|v| v.parse::<i32>().ok()) {
        if version < built {
            return Err(format!(
                "the NVIDIA driver supports CUDA {}, this fav was built for the CUDA {} driver API: update \
                 the driver or rebuild with CUDARC_CUDA_VERSION (scripts/build-cuda.sh)",
                dotted(version),
                dotted(built)
            ));
        }
    }
    result::init().map_err(|e| format!("the CUDA driver {} did not start ({visible}): {e}", dotted(version)))?;
    let count = result::device::get_count().map_err(|e| format!("cannot count the GPUs ({visible}): {e}"))?;
    if index >= count as usize {
        return Err(format!(
            "this node shows {count} GPU(s) ({visible}); name one below {count} in `device` or start one rank per GPU"
        ));
    }
    Ok(())
}

/// The driver API version `scripts/build-cuda.sh` pinned (`CUDARC_CUDA_VERSION`, e.g. 12080),
/// when the build was made that way.
#[cfg(feature = "cuda")]
const BUILT_FOR: Option<&str> = option_env!("CUDARC_CUDA_VERSION");

/// 12080 → "12.8".
#[cfg(feature = "cuda")]
fn dotted(v: i32) -> String {
    format!("{}.{}", v / 1000, v % 1000 / 10)
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Device {
    Device::cuda(index)
}

#[cfg(not(feature = "cuda"))]
fn check(_index: usize) -> Result<(), String> {
    Err("this fav was built without CUDA; rebuild with `--features cuda`".into())
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Device {
    unreachable!("check refuses every GPU in a build without CUDA")
}
