//! MPI collectives (OpenMPI) through rsmpi. The all-reduce is `MPI_Allreduce` with
//! `MPI_IN_PLACE` on the caller's buffer — the call a hand-written MPI program makes — so the
//! trait adds no copy.

use crate::{Collective, CommError};
use mpi::collective::{CommunicatorCollectives, Root};
use mpi::environment::Universe;
use mpi::ffi;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::AsRaw;
use std::os::raw::{c_int, c_void};

/// The world communicator of an initialised MPI environment (finalised on drop).
pub struct Mpi {
    world: SimpleCommunicator,
    /// The library's `MPI_IN_PLACE` sentinel, when the library is one we know.
    in_place: Option<*mut c_void>,
    _universe: Universe,
}

impl Mpi {
    /// Initialise MPI. Fails (instead of aborting) when MPI is already initialised.
    pub fn init() -> Result<Self, CommError> {
        let universe = mpi::initialize()
            .ok_or(CommError::Failed { op: "init", reason: "MPI is already initialised in this process".into() })?;
        // `MPI_IN_PLACE` is a C macro that bindgen cannot export: `(void *) 1` in Open MPI,
        // `(void *) -1` in MPICH and its derivatives. Other libraries get the copying path.
        let version = mpi::environment::library_version().unwrap_or_default();
        let in_place = if version.contains("Open MPI") {
            Some(std::ptr::without_provenance_mut::<c_void>(1))
        } else if version.contains("MPICH") || version.contains("Intel(R) MPI") {
            Some(std::ptr::without_provenance_mut::<c_void>(usize::MAX))
        } else {
            None
        };
        Ok(Self { world: universe.world(), in_place, _universe: universe })
    }

    /// The raw world communicator, for code that needs MPI directly (NCCL bootstrap, benchmarks).
    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// `MPI_IN_PLACE` for raw calls (benchmarks), when known.
    pub fn in_place(&self) -> Option<*mut c_void> {
        self.in_place
    }
}

/// Largest element count one MPI call takes (`int` counts).
const MAX_COUNT: usize = c_int::MAX as usize;

fn check(op: &'static str, rc: c_int) -> Result<(), CommError> {
    if rc == ffi::MPI_SUCCESS as c_int {
        Ok(())
    } else {
        Err(CommError::Failed { op, reason: format!("MPI error code {rc}") })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        crate::check_gather_len(local, out, self.size())?;
        if local.len() > MAX_COUNT {
            return Err(CommError::Failed { op: "all_gather", reason: "block larger than 2^31 elements".into() });
        }
        self.world.all_gather_into(local, out);
        Ok(())
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let Some(in_place) = self.in_place else {
                let send = chunk.to_vec();
                self.world.all_reduce_into(&send[..], chunk, mpi::collective::SystemOperation::sum());
                continue;
            };
            // SAFETY: the library's MPI_IN_PLACE with a valid, exclusively borrowed buffer of
            // `chunk.len()` floats on the world communicator.
            let rc = unsafe {
                ffi::MPI_Allreduce(
                    in_place,
                    chunk.as_mut_ptr() as *mut c_void,
                    chunk.len() as c_int,
                    ffi::RSMPI_FLOAT,
                    ffi::RSMPI_SUM,
                    self.world.as_raw(),
                )
            };
            check("all_reduce_sum", rc)?;
        }
        Ok(())
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        crate::check_root(root, self.size())?;
        for chunk in buf.chunks_mut(MAX_COUNT) {
            self.world.process_at_rank(root as i32).broadcast_into(chunk);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
