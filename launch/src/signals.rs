//! Preemption. SIGUSR1 (Slurm's warning before the time limit, or `scancel --signal=USR1`),
//! SIGTERM and SIGINT ask the job to stop: every rank finishes the current step, a checkpoint is
//! written and waited for, and the process exits with [`EXIT_PREEMPTED`]. A second SIGINT (Ctrl-C
//! twice) ends the process at once.

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Exit code of a job that stopped on a signal after saving its checkpoint: "try again later"
/// (`EX_TEMPFAIL`). The generated Slurm script requeues the job on this code.
pub const EXIT_PREEMPTED: u8 = 75;

/// Exit code after a second SIGINT: the shell's convention for death by SIGINT.
const EXIT_INTERRUPTED: i32 = 130;

/// Start listening; the returned flag is set once a stop was asked for. `rank` labels the log.
pub fn install(rank: usize) -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([SIGUSR1, SIGTERM, SIGINT])?;
    let flag = stop.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let _rank = tracing::info_span!("rank", r = rank).entered();
        for sig in signals.forever() {
            let name = match sig {
                SIGUSR1 => "SIGUSR1",
                SIGTERM => "SIGTERM",
                _ => "SIGINT",
            };
            if sig == SIGINT && flag.load(Ordering::Relaxed) {
                eprintln!("second SIGINT: exiting now without a checkpoint");
                std::process::exit(EXIT_INTERRUPTED);
            }
            flag.store(true, Ordering::Relaxed);
            tracing::warn!(
                signal = name,
                "stop requested: finishing the current step, then saving a checkpoint and exiting with code \
                 {EXIT_PREEMPTED}"
            );
        }
    })?;
    Ok(stop)
}
