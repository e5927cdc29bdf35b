//! NCCL collectives through cudarc, one rank per GPU. Rank 0 creates the NCCL unique id and MPI
//! broadcasts it; broadcast and barrier go over MPI (small, host-side). The trait's buffers are
//! host memory, so each call stages through the rank's GPU on its own stream.

use crate::mpi::Mpi;
use crate::{Collective, CommError};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::Arc;

pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
    mpi: Mpi,
}

fn failed(op: &'static str, e: impl std::fmt::Debug) -> CommError {
    CommError::Failed { op, reason: format!("{e:?}") }
}

/// Whether the CUDA driver and NCCL libraries can be loaded on this machine.
pub fn libraries_present() -> Result<(), CommError> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CommError::Failed { op: "nccl init", reason: "libcuda (the CUDA driver) is not installed".into() });
    }
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(CommError::Failed {
            op: "nccl init",
            reason: "libnccl is not installed (apt install libnccl2)".into(),
        });
    }
    Ok(())
}

impl Nccl {
    /// Join the NCCL world of `mpi`'s ranks on GPU `device_index`. Every rank first opens its
    /// GPU and the ranks agree over MPI that all of them could: a rank without a usable GPU
    /// must fail the whole world, not leave its peers waiting in the id broadcast.
    pub fn init(mpi: Mpi, device_index: usize) -> Result<Self, CommError> {
        let local = libraries_present().and_then(|()| {
            let ctx = CudaContext::new(device_index).map_err(|e| failed("cuda context", e))?;
            ctx.new_stream().map_err(|e| failed("cuda stream", e))
        });
        let failed_ranks = crate::failed_ranks(&mpi, local.is_ok())?;
        let stream = match local {
            Err(e) => return Err(CommError::Failed { op: "nccl init", reason: format!("GPU {device_index}: {e}") }),
            Ok(_) if !failed_ranks.is_empty() => {
                return Err(CommError::Failed {
                    op: "nccl init",
                    reason: format!("rank(s) {failed_ranks:?} could not open their GPU (see their log)"),
                })
            }
            Ok(stream) => stream,
        };
        // Rank 0's id, behind one status byte so that a failed `ncclGetUniqueId` ends every rank.
        let id = (mpi.rank() == 0).then(Id::new).transpose().map_err(|e| failed("nccl id", e));
        let mut bytes = vec![0u8; 129];
        if let Ok(Some(id)) = &id {
            bytes[0] = 1;
            for (d, &c) in bytes[1..].iter_mut().zip(id.internal()) {
                *d = c as u8;
            }
        }
        mpi.broadcast(&mut bytes, 0)?;
        id?;
        if bytes[0] != 1 {
            return Err(CommError::Failed { op: "nccl init", reason: "rank 0 could not create the NCCL id".into() });
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(&bytes[1..]) {
            *d = *s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(stream.clone(), mpi.rank(), mpi.size(), Id::uninit(internal))
            .map_err(|e| failed("nccl comm init", e))?;
        Ok(Self { comm, stream, mpi })
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        crate::check_gather_len(local, out, self.size())?;
        if local.is_empty() {
            return Ok(());
        }
        let send = self.stream.clone_htod(local).map_err(|e| failed("all_gather htod", e))?;
        let mut recv = self.stream.alloc_zeros::<f32>(out.len()).map_err(|e| failed("all_gather alloc", e))?;
        self.comm.all_gather(&send, &mut recv).map_err(|e| failed("all_gather", e))?;
        self.stream.memcpy_dtoh(&recv, out).map_err(|e| failed("all_gather dtoh", e))?;
        self.stream.synchronize().map_err(|e| failed("all_gather sync", e))
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut dev = self.stream.clone_htod(&*buf).map_err(|e| failed("all_reduce htod", e))?;
        self.comm.all_reduce_in_place(&mut dev, &ReduceOp::Sum).map_err(|e| failed("all_reduce", e))?;
        self.stream.memcpy_dtoh(&dev, buf).map_err(|e| failed("all_reduce dtoh", e))?;
        self.stream.synchronize().map_err(|e| failed("all_reduce sync", e))
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        self.mpi.broadcast(buf, root)
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.mpi.barrier()
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}
