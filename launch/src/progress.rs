//! What a person sees while a job runs: a progress bar on a terminal (rank 0), plain periodic
//! log lines otherwise.

use fav_trainer::observe::Observer;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Reporter {
    /// Only rank 0 reports.
    show: bool,
    bar: Option<ProgressBar>,
    tty: bool,
    phase: String,
    total: usize,
    last_line: Instant,
    started: Instant,
    /// Mean reward at the latest evaluation.
    reward: Option<f64>,
}

impl Reporter {
    pub fn new(show: bool) -> Self {
        Self {
            show,
            bar: None,
            tty: show && std::io::stderr().is_terminal(),
            phase: String::new(),
            total: 0,
            last_line: Instant::now(),
            started: Instant::now(),
            reward: None,
        }
    }
}

const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Observer for Reporter {
    fn phase(&mut self, name: &str, total: usize) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.phase = name.to_string();
        self.total = total;
        self.started = Instant::now();
        if self.tty {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>9} [{bar:32}] {pos}/{len} {per_sec} eta {eta} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            self.bar = Some(bar);
        }
    }

    fn progress(&mut self, done: usize, loss: f64) {
        if !self.show {
            return;
        }
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            let reward = self.reward.map_or("—".into(), |r| format!("{r:.4}"));
            b.set_message(format!("loss {loss:.3e}  reward {reward}"));
        } else if self.last_line.elapsed() >= PLAIN_EVERY || done == self.total {
            self.last_line = Instant::now();
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total - done) as f64 / rate.max(1e-9);
            tracing::info!(phase = %self.phase, step = done, total = self.total, loss, reward = self.reward, steps_per_s = format!("{rate:.1}"), eta_s = format!("{eta:.0}"), "progress");
        }
    }

    fn eval(&mut self, reward: f64, line: &str) {
        self.reward = Some(reward);
        match &self.bar {
            Some(b) => b.println(line),
            None => tracing::info!("eval {line}"),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
