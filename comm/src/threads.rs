//! Ranks as threads of one process: the data-parallel world without MPI. On a CPU, splitting the
//! batch over ranks runs the network's element-wise work (which the tensor engine does on one
//! thread) on every core, where intra-op threading alone leaves cores idle.
//!
//! Every collective is two barrier phases over one slot per rank: each rank publishes its buffer,
//! then each reads what it needs; the second barrier keeps a fast rank from overwriting its slot
//! before a slow one has read it. Sums add the slots in rank order on every rank, so all ranks get
//! the same bits (as MPI's reduction gives).

use crate::{check_gather_len, Collective, CommError};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};

/// Run `f` on `ranks` connected ranks, each a thread of this process with its own rayon pool of
/// `threads` threads (its intra-op threading: burn's and the field kernel's rayon work runs in
/// the pool it is called from; one shared pool would make the ranks queue for it). Returns each
/// rank's result in rank order. A rank that panics ends the process, since its peers may wait
/// for it in a collective (as `MPI_Abort` does for processes).
pub fn run<R: Send>(
    ranks: usize,
    threads: usize,
    f: impl Fn(&dyn Collective) -> R + Sync,
) -> Result<Vec<R>, CommError> {
    let pools = (0..ranks)
        .map(|r| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.max(1))
                .thread_name(move |i| format!("rank-{r}-{i}"))
                .stack_size(8 << 20) // the main thread's size: deep autodiff graphs recurse
                .build()
                .map_err(|e| CommError::Failed { op: "thread ranks", reason: format!("thread pool of rank {r}: {e}") })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let group = Threads::group(ranks);
    std::thread::scope(|s| {
        let handles: Vec<_> = group
            .iter()
            .zip(&pools)
            .map(|(c, pool)| {
                let f = &f;
                std::thread::Builder::new()
                    .name(format!("rank-{}", c.rank()))
                    .spawn_scoped(s, move || {
                        let run = std::panic::AssertUnwindSafe(|| pool.install(|| f(c)));
                        std::panic::catch_unwind(run).unwrap_or_else(|_| std::process::exit(101))
                        // message printed
                    })
                    .map_err(|e| CommError::Failed {
                        op: "thread ranks",
                        reason: format!("spawn rank {}: {e}", c.rank()),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(handles.into_iter().map(|h| h.join().unwrap_or_else(|_| std::process::exit(101))).collect())
    })
}

struct Group {
    barrier: Barrier,
    slots: Vec<Mutex<Vec<u8>>>,
}

/// One rank of a group made by [`Threads::group`]; move each into its own thread.
pub struct Threads {
    rank: usize,
    group: Arc<Group>,
}

impl Threads {
    /// `size` connected ranks, one per thread that will use it.
    pub fn group(size: usize) -> Vec<Threads> {
        let size = size.max(1);
        let group =
            Arc::new(Group { barrier: Barrier::new(size), slots: (0..size).map(|_| Mutex::new(Vec::new())).collect() });
        (0..size).map(|rank| Threads { rank, group: group.clone() }).collect()
    }

    fn slot(&self, rank: usize) -> MutexGuard<'_, Vec<u8>> {
        // A rank that panicked while holding a slot ends the process (see `launch`), so a
        // poisoned lock only means its bytes may be stale: the value is still a Vec.
        self.group.slots[rank].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, bytes: &[u8]) {
        let mut s = self.slot(self.rank);
        s.clear();
        s.extend_from_slice(bytes);
    }

    fn wait(&self) {
        self.group.barrier.wait();
    }
}

fn as_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Rank `r` published `got` bytes where this rank expected `want`: the ranks called the same
/// collective with different sizes.
fn mismatch(op: &'static str, r: usize, got: usize, want: usize) -> CommError {
    CommError::Failed { op, reason: format!("rank {r} sent {got} bytes, this rank {want}: sizes must be equal") }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.slots.len()
    }

    fn all_gather_into(&self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        check_gather_len(local, out, self.size())?;
        self.publish(as_bytes(local));
        self.wait();
        let want = std::mem::size_of_val(local);
        let mut bad = None;
        for (r, block) in out.chunks_mut(local.len().max(1)).take(self.size()).enumerate() {
            let s = self.slot(r);
            match s.len() == want {
                true => block.iter_mut().zip(f32s(&s)).for_each(|(o, v)| *o = v),
                false => bad = Some(mismatch("all_gather", r, s.len(), want)),
            }
        }
        self.wait();
        bad.map_or(Ok(()), Err)
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        self.publish(as_bytes(buf));
        self.wait();
        let want = std::mem::size_of_val(buf);
        let mut bad = None;
        let mut sum = vec![0.0f32; buf.len()];
        for r in 0..self.size() {
            let s = self.slot(r);
            match s.len() == want {
                true => sum.iter_mut().zip(f32s(&s)).for_each(|(a, v)| *a += v),
                false => bad = Some(mismatch("all_reduce", r, s.len(), want)),
            }
        }
        self.wait();
        if let Some(e) = bad {
            return Err(e);
        }
        buf.copy_from_slice(&sum);
        Ok(())
    }

    fn broadcast(&self, buf: &mut [u8], root: usize) -> Result<(), CommError> {
        crate::check_root(root, self.size())?;
        if self.rank == root {
            self.publish(buf);
        }
        self.wait();
        let result = {
            let s = self.slot(root);
            if s.len() != buf.len() {
                Err(mismatch("broadcast", root, s.len(), buf.len()))
            } else {
                buf.copy_from_slice(&s);
                Ok(())
            }
        };
        self.wait();
        result
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.wait();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Threads;
    use crate::Collective;

    fn on_every_rank(size: usize, f: impl Fn(&Threads) -> Result<(), String> + Sync) {
        let ranks = Threads::group(size);
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks.iter().map(|c| s.spawn(|| f(c))).collect();
            for h in handles {
                h.join().expect("rank thread").unwrap();
            }
        });
    }

    #[test]
    fn thread_ranks_pass_the_conformance_suite() {
        for size in [1, 2, 3, 4] {
            on_every_rank(size, |c| crate::conformance::run(c));
        }
    }

    #[test]
    fn every_rank_gets_the_same_bits_of_a_sum() {
        // Values whose sum depends on the order of addition in f32.
        on_every_rank(4, |c| {
            let mut v = [[1e8f32, 1.0, -1e8, 0.5][c.rank()]];
            c.all_reduce_sum(&mut v).map_err(|e| e.to_string())?;
            let mut all = c.all_gather(&v).map_err(|e| e.to_string())?;
            all.dedup();
            (all.len() == 1).then_some(()).ok_or(format!("ranks disagree: {all:?}"))
        });
    }

    #[test]
    fn every_rank_learns_which_ranks_failed() {
        on_every_rank(4, |c| {
            let failed = crate::failed_ranks(c, ![1, 3].contains(&c.rank())).map_err(|e| e.to_string())?;
            (failed == [1, 3]).then_some(()).ok_or(format!("rank {} saw {failed:?}", c.rank()))
        });
    }

    #[test]
    fn unequal_blocks_are_an_error_not_a_hang() {
        on_every_rank(2, |c| {
            let local = vec![0.0f32; 1 + c.rank()];
            let mut out = vec![0.0f32; 2 * local.len()];
            match c.all_gather_into(&local, &mut out) {
                Err(e) if e.to_string().contains("must be equal") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
}
