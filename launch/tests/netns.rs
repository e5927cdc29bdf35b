//! Two hosts on one machine (network namespaces on a bridge) run a 2-rank `fav train` with
//! OpenMPI across them. Cutting one host's link makes the job exit non-zero within 60 s instead
//! of hanging, and rerunning the same command resumes from the last checkpoint.
//!
//! Needs root, `ip` (iproute2), `unshare` and OpenMPI; `scripts/test-all.sh` installs them.

mod common;
use common::{checkpoints, examples};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BRIDGE: &str = "favbr0";
const SUBNET: &str = "10.231.0.0/24";

fn sh(script: &str) {
    let o = Command::new("sh").args(["-ec", script]).output().expect("sh runs");
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Hosts `fav-h1`, `fav-h2` (10.231.0.1, .2) on a bridge the launcher reaches as 10.231.0.254;
/// removed on drop, with every process left inside them.
struct Hosts {
    dir: PathBuf,
}

impl Hosts {
    fn up(dir: &Path) -> Self {
        Self::down();
        let mut s = format!("ip link add {BRIDGE} type bridge; ip link set {BRIDGE} up; ");
        s += &format!("ip addr add 10.231.0.254/24 dev {BRIDGE}; ");
        for k in [1, 2] {
            s += &format!(
                "ip netns add fav-h{k}; ip link add favv{k} type veth peer name eth0 netns fav-h{k}; \
                 ip link set favv{k} master {BRIDGE} up; ip -n fav-h{k} addr add 10.231.0.{k}/24 dev eth0; \
                 ip -n fav-h{k} link set eth0 up; ip -n fav-h{k} link set lo up; "
            );
        }
        sh(&s);
        for k in [1, 2] {
            Self::wait_reachable(k);
        }
        // mpirun's remote-shell agent: "ssh 10.231.0.K cmd…" becomes cmd run in namespace fav-hK
        // with its own host name (ranks are grouped into nodes by host name).
        let agent = dir.join("agent.sh");
        std::fs::write(
            &agent,
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in -*) shift;; *) break;; esac; done\n\
             host=$1; shift\nk=${host##*.}\n\
             exec ip netns exec fav-h$k unshare --uts sh -c \"hostname fav-h$k; $*\"\n",
        )
        .unwrap();
        sh(&format!("chmod +x {}", agent.display()));
        std::fs::write(dir.join("hostfile"), "10.231.0.1 slots=1\n10.231.0.2 slots=1\n").unwrap();
        Hosts { dir: dir.to_path_buf() }
    }

    /// Wait until host `k` can open a TCP connection to the launcher's side of the bridge: a
    /// link that just came up takes a moment before the bridge forwards its traffic.
    fn wait_reachable(k: usize) {
        let listener = std::net::TcpListener::bind("10.231.0.254:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = format!("exec 3<>/dev/tcp/10.231.0.254/{port}");
        let t = Instant::now();
        while !Command::new("ip")
            .args(["netns", "exec", &format!("fav-h{k}"), "timeout", "2", "bash", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(t.elapsed() < Duration::from_secs(30), "host fav-h{k} never reached the bridge");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_inside(k: usize) {
        let _ = Command::new("sh").args(["-c", &format!("ip netns pids fav-h{k} | xargs -r kill -9")]).status();
    }

    fn down() {
        for k in [1, 2] {
            Self::kill_inside(k);
            let _ = Command::new("ip").args(["netns", "del", &format!("fav-h{k}")]).stderr(Stdio::null()).status();
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).stderr(Stdio::null()).status();
    }

    /// `mpirun` of a 2-rank `fav train` across the hosts, with TCP keepalives that notice a dead
    /// peer in seconds (OpenMPI's default waits about 8 minutes).
    fn mpirun(&self, d: &Path, out: &Path) -> Command {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "-np", "2", "--mca", "plm_rsh_agent"]).arg(self.dir.join("agent.sh"));
        c.arg("--hostfile").arg(self.dir.join("hostfile"));
        for (k, v) in [
            ("btl", "tcp,self"),
            ("btl_tcp_if_include", SUBNET),
            ("oob_tcp_if_include", SUBNET),
            ("oob_tcp_keepalive_time", "5"),
            ("oob_tcp_keepalive_intvl", "1"),
            ("oob_tcp_keepalive_probes", "3"),
        ] {
            c.args(["--mca", k, v]);
        }
        c.arg(env!("CARGO_BIN_EXE_fav")).arg("train").arg(examples().join("toy-vae.toml"));
        c.args(common::small_job(d, &["steps=500", "eval.every=100", "checkpoint.every=20"]));
        c.arg("--out").arg(out);
        c
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        Self::down();
    }
}

#[test]
fn a_cut_link_ends_the_job_quickly_and_the_rerun_resumes() {
    let d = common::tmp("netns", "cut");
    let hosts = Hosts::up(&d);
    let out = d.join("run");
    let log = d.join("first.log");
    let mut job =
        hosts.mpirun(&d, &out).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let t = Instant::now();
    while checkpoints(&out).last().is_none_or(|&s| s < 60) {
        assert!(t.elapsed() < Duration::from_secs(180), "no checkpoint: {}", std::fs::read_to_string(&log).unwrap());
        if let Some(st) = job.try_wait().unwrap() {
            panic!("the job ended ({st}) before the cut: {}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("nodes=2") && text.contains("fav-h1: 0 | fav-h2: 1"), "two hosts: {text}");

    // Cut host 2 off.
    sh("ip link set favv2 down");
    let cut_at = Instant::now();
    let before = *checkpoints(&out).last().unwrap();
    let status = common::wait_or_kill(&mut job, Duration::from_secs(60), "the job still runs 60 s after the cut");
    let took = cut_at.elapsed();
    assert!(!status.success(), "a job that lost a host must fail");
    // The rank on the far side cannot hear mpirun: end what is left there.
    Hosts::kill_inside(2);
    Hosts::kill_inside(1);
    let last = *checkpoints(&out).last().unwrap();
    assert!(last >= before && last < 500, "checkpoint {last}");

    // Link back, same command: it resumes from the last checkpoint and finishes.
    sh("ip link set favv2 up");
    Hosts::wait_reachable(2);
    let o = hosts.mpirun(&d, &out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["resumed_from"].as_u64(), Some(last), "{err}");
    assert_eq!(summary["world_size"], 2);
    eprintln!("cut link: job exited {status} {:.1} s after the cut; resumed from step {last}", took.as_secs_f64());
}
