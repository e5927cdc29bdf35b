//! Joining the job: who this process is (from the launcher's environment) and the collective
//! that connects it to its peers, cross-checked against each other.

use anyhow::{bail, Result};
use fav_cluster::World;
use fav_comm::{Collective, SingleProcess};

/// Detect the world and open the matching collective.
pub fn join() -> Result<(World, Box<dyn Collective>)> {
    let world = World::detect()?;
    let comm = open(&world)?;
    world.check_against(comm.rank(), comm.size())?;
    Ok((world, comm))
}

#[cfg(feature = "mpi")]
fn open(world: &World) -> Result<Box<dyn Collective>> {
    use fav_cluster::Launcher;
    match world.launcher {
        Launcher::Single => Ok(Box::new(SingleProcess)),
        Launcher::OpenMpi | Launcher::Pmix | Launcher::Mpich | Launcher::Slurm => {
            Ok(Box::new(fav_comm::mpi::Mpi::init()?))
        }
        Launcher::Torchrun => bail!("torchrun launches are not supported: start fav with mpirun or srun --mpi=pmix"),
    }
}

#[cfg(not(feature = "mpi"))]
fn open(world: &World) -> Result<Box<dyn Collective>> {
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
