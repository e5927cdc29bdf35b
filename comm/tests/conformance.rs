//! The conformance suite against every implementation this build has: the single process
//! always; MPI under `mpirun -np 1, 2, 4` with the `mpi` feature.

#[test]
fn single_process_conforms() {
    fav_comm::conformance::run(&fav_comm::SingleProcess).unwrap();
}

#[cfg(feature = "mpi")]
#[test]
fn mpi_conforms_on_1_2_and_4_ranks() {
    for np in ["1", "2", "4"] {
        let out = std::process::Command::new("mpirun")
            .args(["--allow-run-as-root", "--oversubscribe", "-np", np])
            .arg(env!("CARGO_BIN_EXE_fav-comm-check"))
            .arg("conformance")
            .output()
            .expect("mpirun is installed (apt-get install openmpi-bin)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "np {np}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
        let n: usize = np.parse().unwrap();
        for r in 0..n {
            assert!(text.contains(&format!("conformance ok: rank {r} of {n}")), "np {np}: {text}");
        }
    }
}

/// NCCL needs a GPU: where libcuda/libnccl are present the suite must pass on every rank; where
/// they are not (CI), starting NCCL must fail with a message that names the missing library —
/// never a panic.
#[cfg(feature = "nccl")]
#[test]
fn nccl_conforms_or_says_what_is_missing() {
    let present = fav_comm::nccl::libraries_present();
    let out = std::process::Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2"])
        .env("FAV_COMM", "nccl")
        .arg(env!("CARGO_BIN_EXE_fav-comm-check"))
        .arg("conformance")
        .output()
        .expect("mpirun is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("panicked"), "{text}");
    match present {
        Ok(()) => {
            assert!(out.status.success(), "{text}");
            assert!(text.contains("conformance ok: rank 1 of 2"), "{text}");
        }
        Err(e) => {
            assert!(!out.status.success());
            assert!(text.contains("libcuda") || text.contains("libnccl"), "expected `{e}` in: {text}");
        }
    }
}
