//! `fav slurm-script` under a real single-node Slurm (slurmctld, slurmd, munge from Debian),
//! started by this test with its own state folder and stopped after:
//! - the generated script runs a 2-task job with `sbatch`;
//! - a second job is sent `scancel --signal=USR1` (to its tasks) and a third `scancel --batch
//!   --signal=USR1` (to its batch shell, as the time-limit warning is); each stops with a
//!   checkpoint, requeues itself, resumes without any flag, and ends with parameters identical
//!   to the uninterrupted job.
//!
//! Needs root and `apt-get install slurmctld slurmd slurm-client munge` (after OpenMPI);
//! `scripts/test-all.sh` installs them.

mod common;
use common::examples;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// slurmctld + slurmd (and munged when it is not already running), stopped on drop.
struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    started_munge: bool,
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is Slurm installed? see scripts/test-all.sh)"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Slurm {
    fn start(dir: &Path) -> Self {
        for d in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let host = host.trim().split('.').next().unwrap().to_string();
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=fav-test\nSlurmctldHost=localhost\nSlurmUser=root\nAuthType=auth/munge\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nMpiDefault=pmix\nReturnToService=2\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
            ),
        )
        .unwrap();
        // A socket file alone proves nothing: a munged started by apt's postinst may be gone and
        // have left it behind (CI saw exactly that), so ask munge itself and start one with
        // `--force` (which replaces a stale socket) when it does not answer.
        let started_munge = !Command::new("munge").arg("-n").output().is_ok_and(|o| o.status.success());
        if started_munge {
            run_ok(Command::new("sh").args([
                "-c",
                "mkdir -p /run/munge && chown munge:munge /run/munge && \
                 { [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key; } && \
                 chown munge:munge /etc/munge/munge.key && su -s /bin/sh munge -c '/usr/sbin/munged --force'",
            ]));
            run_ok(Command::new("munge").arg("-n"));
        }
        let s = Slurm { dir: dir.to_path_buf(), conf, started_munge };
        run_ok(s.cmd("slurmctld").arg("-i"));
        run_ok(&mut s.cmd("slurmd"));
        let t = Instant::now();
        while run_ok(s.cmd("sinfo").args(["-h", "-o", "%T"])).trim() != "idle" {
            assert!(t.elapsed() < Duration::from_secs(60), "the Slurm node never became idle (logs in {d}/log)");
            std::thread::sleep(Duration::from_millis(250));
        }
        s
    }

    /// A Slurm command (daemon or client) that reads this cluster's config.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `scontrol`'s facts about `job` (`JobState`, `Restarts`, …; Slurm keeps a finished job for
    /// a few minutes).
    fn job(&self, job: &str, key: &str) -> String {
        let text = run_ok(self.cmd("scontrol").args(["show", "job", "-o", job]));
        let prefix = format!("{key}=");
        text.split_whitespace().find_map(|kv| kv.strip_prefix(&prefix)).unwrap_or_default().to_string()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let mut pids = vec![self.dir.join("slurmd.pid"), self.dir.join("slurmctld.pid")];
        if self.started_munge {
            pids.push("/run/munge/munged.pid".into());
        }
        for p in pids {
            if let Ok(pid) = std::fs::read_to_string(&p) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

/// `fav slurm-script` for a 2-task toy job into `out`.
fn script(d: &Path, out: &Path, steps: usize) -> PathBuf {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fav"));
    c.arg("slurm-script").arg(examples().join("toy-vae.toml"));
    c.args(["--nodes", "1", "--tasks-per-node", "2", "--job-name", "fav-test"]).arg("--out").arg(out);
    let steps = format!("steps={steps}");
    c.args(common::small_job(d, &[&steps, "eval.every=50", "checkpoint.every=100"]));
    let path = out.with_extension("sbatch");
    std::fs::write(&path, run_ok(&mut c)).unwrap();
    path
}

fn log_of(out: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(out.join("logs")).unwrap() {
        text += &std::fs::read_to_string(e.unwrap().path()).unwrap();
    }
    text
}

#[test]
fn sbatch_runs_the_script_and_a_preempted_job_requeues_and_resumes_exactly() {
    let d = common::tmp("slurm", "requeue");
    let slurm = Slurm::start(&d.join("slurm"));

    // Uninterrupted.
    let full = d.join("full");
    let s = script(&d, &full, 500);
    let o = slurm.cmd("sbatch").arg("--wait").arg(&s).output().unwrap();
    assert!(o.status.success(), "sbatch --wait failed: {}\n{}", String::from_utf8_lossy(&o.stderr), log_of(&full));
    let log = log_of(&full);
    assert!(log.contains("launcher=Pmix world_size=2 nodes=1 ranks_per_node=2"), "{log}");

    // Preempted once they have evaluated, then left to Slurm.
    // Two preempted jobs: one whose tasks get USR1 from `scancel --signal=USR1`, one whose batch
    // shell gets it (`--batch`, as Slurm's `--signal=B:USR1@grace` warning does) and forwards it.
    // The second queues behind the first and runs while the first waits to be requeued.
    let jobs: Vec<(PathBuf, String, &[&str])> =
        [("cut", &["--signal=USR1"][..]), ("cut-batch", &["--batch", "--signal=USR1"][..])]
            .into_iter()
            .map(|(name, how)| {
                let out = d.join(name);
                let job = run_ok(slurm.cmd("sbatch").arg("--parsable").arg(script(&d, &out, 500))).trim().to_string();
                (out, job, how)
            })
            .collect();
    for (out, job, how) in &jobs {
        let t = Instant::now();
        while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|m| !m.is_empty()) {
            assert!(t.elapsed() < Duration::from_secs(300), "job {job} did not start: {}", slurm.job(job, "JobState"));
            std::thread::sleep(Duration::from_millis(20));
        }
        run_ok(slurm.cmd("scancel").args(*how).arg(job));
    }
    // Slurm holds a requeued job for about two minutes before it is eligible again.
    let a = std::fs::read(full.join("final.safetensors")).unwrap();
    for (cut, job, how) in &jobs {
        let t = Instant::now();
        loop {
            let state = slurm.job(job, "JobState");
            if state == "COMPLETED" {
                break;
            }
            assert!(
                !["FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"].contains(&state.as_str()),
                "job {job} ended {state}: {}",
                log_of(cut)
            );
            assert!(t.elapsed() < Duration::from_secs(400), "job {job} still {state} after 400 s: {}", log_of(cut));
            std::thread::sleep(Duration::from_secs(1));
        }
        let log = log_of(cut);
        assert_eq!(slurm.job(job, "Restarts"), "1", "scancel {how:?}: requeued once: {log}");
        assert!(log.contains("signal=\"SIGUSR1\"") && log.contains("requeueing job"), "{log}");
        assert!(log.contains("resuming from checkpoint"), "the requeued job resumed by itself: {log}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(cut.join("summary.json")).unwrap()).unwrap();
        let from = summary["resumed_from"].as_u64().expect("resumed");
        assert!(
            from > 0 && from < 500 && !from.is_multiple_of(100),
            "resumed from the signal's checkpoint, step {from}"
        );
        let b = std::fs::read(cut.join("final.safetensors")).unwrap();
        assert!(
            a == b,
            "scancel {how:?}: the requeued job (resumed at step {from}) differs from the uninterrupted one"
        );
    }
}
