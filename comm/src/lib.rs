//! Collectives behind one trait: [`SingleProcess`] (always), [`threads::Threads`] (ranks as
//! threads of one process, always), [`mpi::Mpi`] (feature `mpi`), [`nccl::Nccl`] (feature `nccl`).
//! One conformance suite ([`conformance`]) runs against every implementation.

pub mod conformance;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod threads;

/// A failed collective: the peer, transport or argument at fault.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error("collective {op}: {reason}")]
    Failed { op: &'static str, reason: String },
}

/// The operations the trainer needs from its peers. Buffers are flat `f32` (tensors are
/// flattened by the caller, one call per bucket, not one per tensor).
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Concatenate every rank's equally sized `local` block in rank order into `out`
    /// (`local.len() × size` values); reuse `out` across calls to avoid page-faulting fresh memory.
    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError>;
    /// [`Self::all_gather_into`] into a new vector.
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, CommError> {
        let mut out = vec![0.0f32; local.len() * self.size()];
        self.all_gather_into(local, &mut out)?;
        Ok(out)
    }
    /// Element-wise sum over ranks, in place; every rank ends with the same values.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Overwrite `buf` on every rank with `root`'s bytes.
    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<(), CommError>;
    /// Return once every rank has entered.
    fn barrier(&self) -> Result<(), CommError>;
    /// End every rank of the job with `code` (a failed rank must not leave its peers waiting
    /// in a collective).
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The ranks whose `ok` is false, the same list on every rank (one all-gather): a rank that
/// cannot go on fails the whole world with its peers, rather than leave them blocked in the next
/// collective.
pub fn failed_ranks(comm: &dyn Collective, ok: bool) -> Result<Vec<usize>, CommError> {
    let flags = comm.all_gather(&[if ok { 0.0 } else { 1.0 }])?;
    Ok(flags.iter().enumerate().filter(|(_, &f)| f != 0.0).map(|(r, _)| r).collect())
}

/// `out` must hold exactly one block per rank.
pub(crate) fn check_gather_len(local: &[f32], out: &[f32], size: usize) -> Result<(), CommError> {
    if out.len() != local.len() * size {
        return Err(CommError::Failed {
            op: "all_gather",
            reason: format!("output holds {} values, expected {} × {size}", out.len(), local.len()),
        });
    }
    Ok(())
}

/// A broadcast root must be a rank of the world.
pub(crate) fn check_root(root: usize, size: usize) -> Result<(), CommError> {
    if root >= size {
        return Err(CommError::Failed {
            op: "broadcast",
            reason: format!("root {root} out of range for world size {size}"),
        });
    }
    Ok(())
}

/// World size 1: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        check_gather_len(local, out, 1)?;
        out.copy_from_slice(local);
        Ok(())
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [u8], root: usize) -> Result<(), CommError> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_collectives_are_identities() {
        let c = SingleProcess;
        assert_eq!((c.rank(), c.size()), (0, 1));
        assert_eq!(c.all_gather(&[1.0, 2.0]).unwrap(), vec![1.0, 2.0]);
        let mut b = [3.0f32, -1.0];
        c.all_reduce_sum(&mut b).unwrap();
        assert_eq!(b, [3.0, -1.0]);
        let mut bytes = [7u8; 3];
        c.broadcast(&mut bytes, 0).unwrap();
        assert_eq!(bytes, [7; 3]);
        assert!(c.broadcast(&mut bytes, 1).is_err());
        c.barrier().unwrap();
    }
}
