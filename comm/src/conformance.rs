//! The conformance suite every [`Collective`] must pass, on every rank of its world. Values
//! depend on the rank so that a misordered gather or a partial reduction is caught.

use crate::Collective;

fn fail(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// Run every check; the error says which property failed on which rank.
pub fn run(c: &dyn Collective) -> Result<(), String> {
    let (rank, size) = (c.rank(), c.size());
    let ctx = |m: String| format!("rank {rank}/{size}: {m}");
    if size == 0 || rank >= size {
        return Err(ctx(format!("impossible rank {rank} of {size}")));
    }
    // Every rank agrees on the world size.
    let mut one = [1.0f32];
    c.all_reduce_sum(&mut one).map_err(|e| ctx(fail(e)))?;
    if one[0] != size as f32 {
        return Err(ctx(format!("sum of ones is {} for world size {size}", one[0])));
    }

    // all_gather: blocks land in rank order, for empty, tiny and large blocks.
    for n in [0usize, 1, 7, 1000, 1 << 20] {
        let local: Vec<f32> = (0..n).map(|i| (rank * 1_000_003 + i) as f32).collect();
        let all = c.all_gather(&local).map_err(|e| ctx(fail(e)))?;
        if all.len() != n * size {
            return Err(ctx(format!("all_gather of {n}: got {} values", all.len())));
        }
        for r in 0..size {
            for i in [0, n / 2, n.saturating_sub(1)] {
                if n > 0 && all[r * n + i] != (r * 1_000_003 + i) as f32 {
                    return Err(ctx(format!("all_gather of {n}: block {r} element {i} is {}", all[r * n + i])));
                }
            }
        }
    }

    // all_reduce_sum: exact small integers, so the expected sum is exact in f32.
    for n in [1usize, 3, 1000, 1 << 22] {
        let mut buf: Vec<f32> = (0..n).map(|i| (rank + (i % 97)) as f32).collect();
        c.all_reduce_sum(&mut buf).map_err(|e| ctx(fail(e)))?;
        let ranks: usize = (0..size).sum();
        for i in [0, n / 2, n - 1] {
            let want = (ranks + size * (i % 97)) as f32;
            if buf[i] != want {
                return Err(ctx(format!("all_reduce_sum of {n}: element {i} is {} not {want}", buf[i])));
            }
        }
    }

    // broadcast from every root, over a non-trivial byte pattern.
    for root in 0..size {
        let pattern = |i: usize| (i * 31 + root * 7) as u8;
        let mut buf: Vec<u8> = if rank == root { (0..4099).map(pattern).collect() } else { vec![0; 4099] };
        c.broadcast(&mut buf, root).map_err(|e| ctx(fail(e)))?;
        if let Some(i) = (0..buf.len()).find(|&i| buf[i] != pattern(i)) {
            return Err(ctx(format!("broadcast from {root}: byte {i} is {}", buf[i])));
        }
    }
    if c.broadcast(&mut [0u8; 4], size).is_ok() {
        return Err(ctx("broadcast from a root outside the world succeeded".into()));
    }

    // A wrongly sized output is refused, not overrun.
    let mut short = vec![0.0f32; 3 * size - 1];
    if c.all_gather_into(&[1.0, 2.0, 3.0], &mut short).is_ok() {
        return Err(ctx("all_gather_into accepted a short output buffer".into()));
    }

    c.barrier().map_err(|e| ctx(fail(e)))?;
    Ok(())
}
