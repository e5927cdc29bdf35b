//! Who am I: rank, local rank, world size, node list and device, read from the launcher's
//! environment (OpenMPI, PMIx, MPICH / Intel MPI, Slurm, torchrun).
//!
//! MPI/PMIx values win over Slurm's: `mpirun` inside `sbatch` leaves `SLURM_PROCID` unset or 0 on
//! every rank, while the MPI variables are right. The result is cross-checked against the
//! communicator with [`World::check_against`].

mod hostlist;

pub use hostlist::expand as expand_hostlist;

/// Which launcher's variables described this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Launcher {
    /// No launcher variables: one process.
    Single,
    /// `mpirun` from OpenMPI (`OMPI_COMM_WORLD_*`).
    OpenMpi,
    /// A PMIx launcher such as `srun --mpi=pmix` (`PMIX_RANK`).
    Pmix,
    /// MPICH / Intel MPI Hydra (`PMI_RANK`, `PMI_SIZE`).
    Mpich,
    /// Slurm `srun` (`SLURM_PROCID`, `SLURM_NTASKS`).
    Slurm,
    /// torchrun (`RANK`, `WORLD_SIZE`).
    Torchrun,
}

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct World {
    pub launcher: Launcher,
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes on this node.
    pub local_rank: usize,
    /// Index of this node, when the launcher says.
    pub node_rank: Option<usize>,
    /// Host names of the job's nodes, when the launcher says (Slurm's expanded node list).
    pub nodes: Vec<String>,
    /// The accelerator ordinal this rank should use (after `CUDA_VISIBLE_DEVICES` renumbering).
    pub device_index: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error("environment variable {name}={value:?} is not a valid {what}")]
    Malformed { name: &'static str, value: String, what: &'static str },
    #[error("{launcher:?} says rank {rank} of {size}, which is impossible")]
    Inconsistent { launcher: Launcher, rank: usize, size: usize },
    #[error("{launcher:?} environment found but {missing} is not set")]
    Missing { launcher: Launcher, missing: &'static str },
    #[error(
        "the launcher ({launcher:?}) says rank {env_rank} of {env_size} but the communicator says rank {comm_rank} of \
         {comm_size}: the job was started inconsistently (e.g. a non-MPI build under mpirun, or a mixed launcher)"
    )]
    Disagrees { launcher: Launcher, env_rank: usize, env_size: usize, comm_rank: usize, comm_size: usize },
}

/// Reads one variable; the seam that lets tests supply an environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

fn num(env: &dyn Env, name: &'static str) -> Result<Option<usize>, ClusterError> {
    match env.var(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| ClusterError::Malformed { name, value: v, what: "count" }),
    }
}

fn required(env: &dyn Env, launcher: Launcher, name: &'static str) -> Result<usize, ClusterError> {
    num(env, name)?.ok_or(ClusterError::Missing { launcher, missing: name })
}

impl World {
    /// Detect from the process environment.
    pub fn detect() -> Result<Self, ClusterError> {
        Self::from_env(&ProcessEnv)
    }

    /// Detect from `env`, in priority order OpenMPI, PMIx, MPICH, Slurm, torchrun.
    pub fn from_env(env: &dyn Env) -> Result<Self, ClusterError> {
        let slurm_nodes = match env.var("SLURM_JOB_NODELIST").or_else(|| env.var("SLURM_NODELIST")) {
            Some(list) => expand_hostlist(&list).map_err(|_| ClusterError::Malformed {
                name: "SLURM_JOB_NODELIST",
                value: list,
                what: "hostlist",
            })?,
            None => Vec::new(),
        };
        let slurm_node = num(env, "SLURM_NODEID")?;
        let (launcher, rank, size, local_rank, node_rank) = if env.var("OMPI_COMM_WORLD_RANK").is_some() {
            let l = Launcher::OpenMpi;
            (
                l,
                required(env, l, "OMPI_COMM_WORLD_RANK")?,
                required(env, l, "OMPI_COMM_WORLD_SIZE")?,
                num(env, "OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0),
                num(env, "OMPI_COMM_WORLD_NODE_RANK")?.or(slurm_node),
            )
        } else if env.var("PMIX_RANK").is_some() {
            // PMIx gives the rank; the size and local rank come from Slurm when srun launched us.
            let l = Launcher::Pmix;
            let size = num(env, "PMIX_SIZE")?.or(num(env, "SLURM_NTASKS")?).or(num(env, "SLURM_NPROCS")?);
            (
                l,
                required(env, l, "PMIX_RANK")?,
                size.ok_or(ClusterError::Missing { launcher: l, missing: "PMIX_SIZE or SLURM_NTASKS" })?,
                num(env, "PMIX_LOCAL_RANK")?.or(num(env, "SLURM_LOCALID")?).unwrap_or(0),
                slurm_node,
            )
        } else if env.var("PMI_RANK").is_some() {
            let l = Launcher::Mpich;
            (
                l,
                required(env, l, "PMI_RANK")?,
                required(env, l, "PMI_SIZE")?,
                num(env, "MPI_LOCALRANKID")?.or(num(env, "PMI_LOCAL_RANK")?).unwrap_or(0),
                slurm_node,
            )
        } else if env.var("SLURM_PROCID").is_some() && env.var("SLURM_NTASKS").is_some() {
            let l = Launcher::Slurm;
            (
                l,
                required(env, l, "SLURM_PROCID")?,
                required(env, l, "SLURM_NTASKS")?,
                num(env, "SLURM_LOCALID")?.unwrap_or(0),
                slurm_node,
            )
        } else if env.var("RANK").is_some() && env.var("WORLD_SIZE").is_some() {
            let l = Launcher::Torchrun;
            (
                l,
                required(env, l, "RANK")?,
                required(env, l, "WORLD_SIZE")?,
                num(env, "LOCAL_RANK")?.unwrap_or(0),
                num(env, "GROUP_RANK")?,
            )
        } else {
            (Launcher::Single, 0, 1, 0, None)
        };
        if size == 0 || rank >= size {
            return Err(ClusterError::Inconsistent { launcher, rank, size });
        }
        let device_index = device_index(env, local_rank)?;
        Ok(World { launcher, rank, size, local_rank, node_rank, nodes: slurm_nodes, device_index })
    }

    /// Stop with a clear message when the communicator disagrees with the launcher.
    pub fn check_against(&self, comm_rank: usize, comm_size: usize) -> Result<(), ClusterError> {
        if self.launcher == Launcher::Single && comm_size == 1 {
            return Ok(());
        }
        if self.rank != comm_rank || self.size != comm_size {
            return Err(ClusterError::Disagrees {
                launcher: self.launcher,
                env_rank: self.rank,
                env_size: self.size,
                comm_rank,
                comm_size,
            });
        }
        Ok(())
    }
}

/// The device ordinal for `local_rank`: CUDA renumbers the devices listed in
/// `CUDA_VISIBLE_DEVICES` from 0, so with k visible devices local rank r uses ordinal r mod k
/// (one visible device — Slurm's per-task binding — means ordinal 0).
fn device_index(env: &dyn Env, local_rank: usize) -> Result<usize, ClusterError> {
    match env.var("CUDA_VISIBLE_DEVICES") {
        Some(list) => {
            let visible = list.split(',').filter(|s| !s.trim().is_empty()).count();
            if visible == 0 {
                return Err(ClusterError::Malformed { name: "CUDA_VISIBLE_DEVICES", value: list, what: "device list" });
            }
            Ok(local_rank % visible)
        }
        None => Ok(local_rank),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn no_launcher_is_a_single_process() {
        let w = World::from_env(&env(&[])).unwrap();
        assert_eq!((w.launcher, w.rank, w.size, w.local_rank, w.device_index), (Launcher::Single, 0, 1, 0, 0));
    }

    #[test]
    fn openmpi() {
        let w = World::from_env(&env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("PMIX_RANK", "3"),
        ]))
        .unwrap();
        assert_eq!((w.launcher, w.rank, w.size, w.local_rank), (Launcher::OpenMpi, 3, 4, 1));
    }

    #[test]
    fn mpirun_inside_sbatch_ignores_slurm_procid() {
        // The trap of the recipes: SLURM_PROCID is 0 on every rank, the MPI variables are right.
        let w = World::from_env(&env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "gpu[01-02]"),
            ("SLURM_NODEID", "1"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]))
        .unwrap();
        assert_eq!((w.launcher, w.rank, w.size, w.local_rank), (Launcher::OpenMpi, 3, 4, 1));
        assert_eq!(w.nodes, vec!["gpu01", "gpu02"]);
        assert_eq!(w.node_rank, Some(1));
    }

    #[test]
    fn srun_with_pmix() {
        let w = World::from_env(&env(&[
            ("PMIX_RANK", "5"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[01-04,07],cpu3"),
        ]))
        .unwrap();
        assert_eq!((w.launcher, w.rank, w.size, w.local_rank, w.node_rank), (Launcher::Pmix, 5, 8, 1, Some(2)));
        assert_eq!(w.nodes, vec!["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu3"]);
    }

    #[test]
    fn mpich_and_intel_mpi() {
        let w = World::from_env(&env(&[("PMI_RANK", "2"), ("PMI_SIZE", "3"), ("MPI_LOCALRANKID", "0")])).unwrap();
        assert_eq!((w.launcher, w.rank, w.size, w.local_rank), (Launcher::Mpich, 2, 3, 0));
    }

    #[test]
    fn plain_slurm_and_torchrun() {
        let w = World::from_env(&env(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "1")])).unwrap();
        assert_eq!((w.launcher, w.rank, w.size, w.local_rank), (Launcher::Slurm, 1, 2, 1));
        let w = World::from_env(&env(&[("RANK", "6"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "2")])).unwrap();
        assert_eq!((w.launcher, w.rank, w.size, w.local_rank), (Launcher::Torchrun, 6, 8, 2));
    }

    #[test]
    fn device_follows_local_rank_and_visible_devices() {
        let base = [("OMPI_COMM_WORLD_RANK", "5"), ("OMPI_COMM_WORLD_SIZE", "8"), ("OMPI_COMM_WORLD_LOCAL_RANK", "5")];
        assert_eq!(World::from_env(&env(&base)).unwrap().device_index, 5);
        let mut four = base.to_vec();
        four.push(("CUDA_VISIBLE_DEVICES", "4,5,6,7"));
        assert_eq!(World::from_env(&env(&four)).unwrap().device_index, 1);
        let mut bound = base.to_vec();
        bound.push(("CUDA_VISIBLE_DEVICES", "3"));
        assert_eq!(World::from_env(&env(&bound)).unwrap().device_index, 0);
    }

    #[test]
    fn malformed_and_inconsistent_values_are_named() {
        let e = World::from_env(&env(&[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "2")])).unwrap_err();
        assert!(e.to_string().contains("OMPI_COMM_WORLD_RANK"), "{e}");
        let e = World::from_env(&env(&[("OMPI_COMM_WORLD_RANK", "4"), ("OMPI_COMM_WORLD_SIZE", "4")])).unwrap_err();
        assert!(matches!(e, ClusterError::Inconsistent { .. }), "{e}");
        let e = World::from_env(&env(&[("OMPI_COMM_WORLD_RANK", "0")])).unwrap_err();
        assert!(e.to_string().contains("OMPI_COMM_WORLD_SIZE"), "{e}");
        let e = World::from_env(&env(&[("SLURM_JOB_NODELIST", "gpu[03-01]")])).unwrap_err();
        assert!(e.to_string().contains("SLURM_JOB_NODELIST"), "{e}");
    }

    #[test]
    fn communicator_cross_check() {
        let w = World::from_env(&env(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")])).unwrap();
        w.check_against(1, 2).unwrap();
        let e = w.check_against(0, 1).unwrap_err();
        assert!(e.to_string().contains("communicator says rank 0 of 1"), "{e}");
        World::from_env(&env(&[])).unwrap().check_against(0, 1).unwrap();
    }
}
