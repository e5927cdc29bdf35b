//! Joining the job: who this process is (from the launcher's environment) and the collective
//! that connects it to its peers, cross-checked against each other.

use anyhow::{bail, Result};
use fav_cluster::World;
use fav_comm::{Collective, SingleProcess};

/// Detect the world and open the matching collective (`comm` is the config key of that name).
pub fn join(comm: &str, cuda: bool) -> Result<(World, Box<dyn Collective>)> {
    let world = World::detect()?;
    let comm = open(&world, comm, cuda)?;
    world.check_against(comm.rank(), comm.size())?;
    Ok((world, comm))
}

#[cfg(feature = "mpi")]
fn open(world: &World, comm: &str, cuda: bool) -> Result<Box<dyn Collective>> {
    use fav_cluster::Launcher;
    match world.launcher {
        Launcher::Single => return Ok(Box::new(SingleProcess)),
        Launcher::OpenMpi | Launcher::Pmix | Launcher::Mpich | Launcher::Slurm => {}
        Launcher::Torchrun => bail!("torchrun launches are not supported: start fav with mpirun or srun --mpi=pmix"),
    }
    let mpi = fav_comm::mpi::Mpi::init()?;
    let nccl = comm == "nccl" || (comm == "auto" && cuda && cfg!(feature = "nccl"));
    if !nccl {
        return Ok(Box::new(mpi));
    }
    #[cfg(feature = "nccl")]
    return Ok(Box::new(fav_comm::nccl::Nccl::init(mpi, world.device_index)?));
    #[cfg(not(feature = "nccl"))]
    bail!("comm = \"nccl\" but this fav was built without NCCL: rebuild with `--features nccl`")
}

#[cfg(not(feature = "mpi"))]
fn open(world: &World, comm: &str, _cuda: bool) -> Result<Box<dyn Collective>> {
    if comm == "nccl" {
        bail!("comm = \"nccl\" but this fav was built without NCCL: rebuild with `--features nccl`");
    }
    if world.size > 1 {
        bail!(
            "launched as rank {} of {} by {:?}, but this fav was built without MPI: rebuild with \
             `cargo build --release -p fav-launch --features mpi`",
            world.rank,
            world.size,
            world.launcher
        );
    }
    Ok(Box::new(SingleProcess))
}
