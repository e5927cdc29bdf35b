//! `fav-comm-check conformance` runs the conformance suite on this world;
//! `fav-comm-check bench` times all-gather and all-reduce through the trait against raw MPI.
//! Under `mpirun` (OpenMPI variables present) a build with the `mpi` feature uses MPI.

use fav_comm::{conformance, Collective, SingleProcess};
use std::process::ExitCode;

/// The implementation under test: `FAV_COMM=nccl` (feature `nccl`) selects NCCL on the GPU of
/// this rank's local index; under mpirun, MPI; otherwise the single process.
fn world() -> Result<Box<dyn Collective>, fav_comm::CommError> {
    #[cfg(feature = "mpi")]
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMIX_RANK").is_some() {
        let mpi = fav_comm::mpi::Mpi::init()?;
        #[cfg(feature = "nccl")]
        if std::env::var("FAV_COMM").is_ok_and(|v| v == "nccl") {
            let local: usize =
                std::env::var("OMPI_COMM_WORLD_LOCAL_RANK").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            return Ok(Box::new(fav_comm::nccl::Nccl::init(mpi, local)?));
        }
        return Ok(Box::new(mpi));
    }
    Ok(Box::new(SingleProcess))
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "conformance" => {
            let c = match world() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cannot start the collective: {e}");
                    return ExitCode::from(3);
                }
            };
            match conformance::run(c.as_ref()) {
                Ok(()) => {
                    println!("conformance ok: rank {} of {}", c.rank(), c.size());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("conformance FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "mpi")]
        "bench" => {
            bench::run();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: fav-comm-check conformance|bench");
            ExitCode::from(2)
        }
    }
}

#[cfg(feature = "mpi")]
mod bench {
    use fav_comm::{mpi::Mpi, Collective};
    use mpi::collective::CommunicatorCollectives;
    use mpi::ffi;
    use mpi::traits::AsRaw;
    use std::os::raw::{c_int, c_void};
    use std::time::Instant;

    /// Median seconds of `runs` calls each of `a` and `b`, interleaved (a, b, a, b, …) after a
    /// warm-up so neither side profits from going second; barriers make every rank time the same
    /// collective.
    fn medians(mpi: &Mpi, runs: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
        a();
        b();
        let time = |f: &mut dyn FnMut()| {
            mpi.world().barrier();
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        };
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ta.push(time(&mut a));
            tb.push(time(&mut b));
        }
        ta.sort_by(f64::total_cmp);
        tb.sort_by(f64::total_cmp);
        (ta[runs / 2], tb[runs / 2])
    }

    pub fn run() {
        let mpi = Mpi::init().expect("MPI init");
        let (rank, size) = (mpi.rank(), mpi.size());
        let runs = 15;
        for mib in [1usize, 16, 64] {
            let n = mib * (1 << 20) / 4;
            // all-reduce of n floats, in place, through the trait and as a hand-written MPI call
            let buf = std::cell::RefCell::new(vec![1.0f32; n]);
            let (trait_ar, raw_ar) = medians(
                &mpi,
                runs,
                || mpi.all_reduce_sum(&mut buf.borrow_mut()).unwrap(),
                || unsafe {
                    let mut b = buf.borrow_mut();
                    ffi::MPI_Allreduce(
                        mpi.in_place().expect("Open MPI or MPICH"),
                        b.as_mut_ptr() as *mut c_void,
                        n as c_int,
                        ffi::RSMPI_FLOAT,
                        ffi::RSMPI_SUM,
                        mpi.world().as_raw(),
                    );
                },
            );
            // all-gather to n floats in total (n/size per rank), into a reused buffer
            let local = vec![1.0f32; n / size];
            let out = std::cell::RefCell::new(vec![0.0f32; (n / size) * size]);
            let (trait_ag, raw_ag) = medians(
                &mpi,
                runs,
                || mpi.all_gather_into(&local, &mut out.borrow_mut()).unwrap(),
                || mpi.world().all_gather_into(&local[..], &mut out.borrow_mut()[..]),
            );
            if rank == 0 {
                println!(
                    "{{\"ranks\": {size}, \"mib\": {mib}, \"all_reduce_trait_ms\": {:.3}, \"all_reduce_raw_ms\": {:.3}, \
                     \"all_gather_trait_ms\": {:.3}, \"all_gather_raw_ms\": {:.3}}}",
                    1e3 * trait_ar,
                    1e3 * raw_ar,
                    1e3 * trait_ag,
                    1e3 * raw_ag
                );
            }
        }
    }
}
