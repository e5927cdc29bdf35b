//! Joining the job: who this process is (from the launcher's environment) and the collective
//! that connects it to its peers, cross-checked against each other.

use anyhow::{bail, Result};
use fav_cluster::World;
use fav_comm::{Collective, SingleProcess};
use fav_trainer::config::CommKind;
use std::process::ExitCode;

/// Detect the world and open the matching collective (`comm` is the config key of that name).
pub fn join(comm: CommKind, cuda: bool) -> Result<(World, Box<dyn Collective>)> {
    let world = World::detect()?;
    let comm = open(&world, comm, cuda)?;
    world.check_against(comm.rank(), comm.size())?;
    Ok((world, comm))
}

#[cfg(feature = "mpi")]
fn open(world: &World, comm: CommKind, cuda: bool) -> Result<Box<dyn Collective>> {
    use fav_cluster::Launcher;
    match world.launcher {
        Launcher::Single => return Ok(Box::new(SingleProcess)),
        Launcher::OpenMpi | Launcher::Pmix | Launcher::Mpich | Launcher::Slurm => {}
        Launcher::Torchrun => bail!("torchrun launches are not supported: start fav with mpirun or srun --mpi=pmix"),
    }
    let mpi = fav_comm::mpi::Mpi::init()?;
    let nccl = comm == CommKind::Nccl || (comm == CommKind::Auto && cuda && cfg!(feature = "nccl"));
    if !nccl {
        return Ok(Box::new(mpi));
    }
    #[cfg(feature = "nccl")]
    return Ok(Box::new(fav_comm::nccl::Nccl::init(mpi, world.device_index)?));
    #[cfg(not(feature = "nccl"))]
    bail!("comm = \"nccl\" but this fav was built without NCCL: rebuild with `--features nccl`")
}

#[cfg(not(feature = "mpi"))]
fn open(world: &World, comm: CommKind, _cuda: bool) -> Result<Box<dyn Collective>> {
    if comm == CommKind::Nccl {
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

/// Run `f` once per rank of this process: on `comm` itself, or with `ranks > 1` on that many
/// ranks as threads ([`fav_comm::threads::run`]), each with an equal share of the cores
/// (`RAYON_NUM_THREADS` each when set). Thread ranks only form a world of their own (no mpirun)
/// on the CPU. Returns rank 0's exit code. A rank that fails ends the process, since its peers
/// may wait for it in a collective.
pub fn each_rank(
    comm: Box<dyn Collective>,
    ranks: usize,
    cfg: &fav_trainer::config::Config,
    f: impl Fn(&dyn Collective) -> Result<ExitCode> + Sync,
) -> Result<ExitCode> {
    if ranks == 0 {
        bail!("--ranks 0: a run needs at least one rank");
    }
    if ranks == 1 {
        return f(comm.as_ref());
    }
    let cuda = cfg.device.is_cuda();
    // Refuse a layout that cannot split the batch before any thread starts.
    fav_trainer::step::Layout::new(cfg.fav.batch, cfg.fav.conditions, ranks, 0)
        .map_err(|e| anyhow::anyhow!("--ranks {ranks}: {e}"))?;
    if comm.size() > 1 {
        bail!(
            "--ranks {ranks}: thread ranks form a world of their own, but this process is rank {} of {} \
             under a launcher: start more processes instead (mpirun -np / srun --ntasks)",
            comm.rank(),
            comm.size()
        );
    }
    if cuda {
        bail!(
            "--ranks {ranks} runs ranks as CPU threads; for several GPUs start one process per GPU with mpirun or srun"
        );
    }
    let threads = match std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n > 0 => n,
        _ => (cpu_cores().0 / ranks).max(1),
    };
    let codes = fav_comm::threads::run(ranks, threads, |c| {
        f(c).unwrap_or_else(|e| {
            eprintln!("error on rank {}: {e:#}", c.rank());
            std::process::exit(2)
        })
    })?;
    Ok(codes.into_iter().next().unwrap_or(ExitCode::FAILURE))
}

/// What rank 0 logs at start: who runs where, gathered from every rank.
#[derive(Debug, PartialEq)]
pub struct Layout {
    /// Host name and the ranks on it, in order of first rank.
    pub nodes: Vec<(String, Vec<usize>)>,
    /// Device of each rank (`cpu`, `cuda:1`).
    pub devices: Vec<String>,
}

/// Bytes per gathered field (longer host names are cut).
const FIELD: usize = 64;

/// Gather every rank's host name and device (as bytes carried in `f32`s: the collective's one type).
pub fn gather_layout(comm: &dyn Collective, device: &str) -> Result<Layout> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let mut mine = vec![0f32; 2 * FIELD];
    for (i, s) in [host.as_bytes(), device.as_bytes()].iter().enumerate() {
        for (slot, &b) in mine[i * FIELD..(i + 1) * FIELD].iter_mut().zip(s.iter()) {
            *slot = f32::from(b);
        }
    }
    let all = comm.all_gather(&mine)?;
    let text = |v: &[f32]| {
        String::from_utf8_lossy(&v.iter().map(|&x| x as u8).take_while(|&b| b != 0).collect::<Vec<_>>()).into_owned()
    };
    let mut layout = Layout { nodes: Vec::new(), devices: Vec::new() };
    for (rank, block) in all.chunks(2 * FIELD).enumerate() {
        let host = text(&block[..FIELD]);
        match layout.nodes.iter_mut().find(|(h, _)| *h == host) {
            Some((_, ranks)) => ranks.push(rank),
            None => layout.nodes.push((host, vec![rank])),
        }
        layout.devices.push(text(&block[FIELD..]));
    }
    Ok(layout)
}

impl Layout {
    /// `host-a: 0,1 | host-b: 2,3`.
    pub fn node_list(&self) -> String {
        let ranks = |r: &[usize]| r.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        self.nodes.iter().map(|(h, r)| format!("{h}: {}", ranks(r))).collect::<Vec<_>>().join(" | ")
    }

    /// Ranks per node: one number when every node has the same count, else each.
    pub fn ranks_per_node(&self) -> String {
        let counts: Vec<usize> = self.nodes.iter().map(|(_, r)| r.len()).collect();
        if counts.windows(2).all(|w| w[0] == w[1]) {
            counts.first().map_or("0".into(), usize::to_string)
        } else {
            counts.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
        }
    }

    /// `cpu ×4`, or the devices in rank order when they differ.
    pub fn device_list(&self) -> String {
        match self.devices.first() {
            Some(d) if self.devices.iter().all(|x| x == d) => format!("{d} ×{}", self.devices.len()),
            _ => self.devices.join(","),
        }
    }
}

/// Cores this process may run on (its affinity mask, which burn's thread pool follows) and cores
/// online on the machine.
pub fn cpu_cores() -> (usize, usize) {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok().and_then(|s| count_cpu_list(s.trim()));
    (usable, online.unwrap_or(usable))
}

/// Number of CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(list: &str) -> Option<usize> {
    list.split(',').try_fold(0, |n, part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
        Some(n + b.checked_sub(a)? + 1)
    })
}

/// A store URL fit for logs: any `user:secret@` part of its authority removed.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            match path {
                Some(p) => format!("{scheme}://{host}/{p}"),
                None => format!("{scheme}://{host}"),
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-15"), Some(16));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn single_process_layout_and_redaction() {
        let l = gather_layout(&SingleProcess, "cpu").unwrap();
        assert_eq!(l.nodes.len(), 1);
        assert_eq!(l.nodes[0].1, vec![0]);
        assert!(!l.nodes[0].0.is_empty());
        assert_eq!(l.device_list(), "cpu ×1");
        assert_eq!(l.ranks_per_node(), "1");
        let two = Layout {
            nodes: vec![("a".into(), vec![0, 1]), ("b".into(), vec![2])],
            devices: vec!["cuda:0".into(), "cuda:1".into(), "cuda:0".into()],
        };
        assert_eq!(two.node_list(), "a: 0,1 | b: 2");
        assert_eq!(two.ranks_per_node(), "2,1");
        assert_eq!(two.device_list(), "cuda:0,cuda:1,cuda:0");
        assert_eq!(redact("s3://AKIA:secret@bucket/run"), "s3://bucket/run");
        assert_eq!(redact("s3://bucket/run"), "s3://bucket/run");
        assert_eq!(redact("/scratch/run/checkpoints"), "/scratch/run/checkpoints");
    }
}
