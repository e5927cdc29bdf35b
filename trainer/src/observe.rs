//! What a job tells whoever runs it (progress bars, logs), and the one schedule every periodic
//! action follows.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

/// Receives a job's progress.
pub trait Observer {
    /// A long phase starts: `total` units of work.
    fn phase(&mut self, _name: &str, _total: usize) {}
    /// `done` units of the current phase are finished; `loss` is the latest.
    fn progress(&mut self, _done: usize, _loss: f64) {}
    /// An evaluation finished: its mean reward and a one-line account of it.
    fn eval(&mut self, _reward: f64, _line: &str) {}
}

/// Observes nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// A training loop's report after each step: `(step, loss)`; `Break` asks it to stop (a signal),
/// and a stopped training returns nothing.
pub type Progress<'a> = &'a mut dyn FnMut(usize, f64) -> ControlFlow<()>;

/// Start the training phase `phase` of `steps` steps on `obs`. The returned callback reports each
/// step's loss and asks the training to stop once a stop was requested (a signal).
pub fn pretraining<'a>(
    obs: &'a mut dyn Observer,
    stop: &'a AtomicBool,
    phase: &str,
    steps: usize,
) -> impl FnMut(usize, f64) -> ControlFlow<()> + 'a {
    obs.phase(phase, steps);
    move |step, loss| {
        obs.progress(step, loss);
        if stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// True at every `every`-th step and at the last one; `every = 0` means never.
pub fn due(done: usize, every: usize, last: usize) -> bool {
    every > 0 && (done.is_multiple_of(every) || done == last)
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn due_every_n_steps_and_at_the_end() {
        let hits: Vec<usize> = (1..=25).filter(|&d| due(d, 10, 25)).collect();
        assert_eq!(hits, vec![10, 20, 25]);
        assert!(!(1..=25).any(|d| due(d, 0, 25)), "0 means never");
    }
}
