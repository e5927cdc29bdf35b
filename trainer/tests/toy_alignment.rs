//! FAV on the 8-gaussians toy, end to end at a CI budget: for each generator family the aligned
//! generator is closer to the tilted target than its base (KL and MMD² fall) and earns more
//! reward. Runs are deterministic, so these are fixed facts of the code, not samples of luck;
//! the margins are set well inside what the runs show (numbers in BENCHMARKS.md).

use fav_trainer::config::Config;
use fav_trainer::observe::Quiet;
use fav_trainer::tasks::toy::Summary;

fn summary(report: fav_trainer::Report) -> Summary {
    serde_json::from_value(report.summary).expect("a toy summary")
}

fn run(family: &str, sample_steps: usize, pretrain_steps: usize, steps: usize) -> Summary {
    let dir = std::env::temp_dir().join(format!("fav-align-{}-{family}-{sample_steps}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::default();
    cfg.model.family = family.to_string();
    cfg.model.sample_steps = sample_steps;
    cfg.pretrain.steps = pretrain_steps;
    cfg.pretrain.eval_every = pretrain_steps / 4;
    cfg.pretrain.cache_dir = dir.join("cache").display().to_string();
    if family == "meanflow" {
        cfg.pretrain.lr = 3e-4;
    }
    cfg.steps = steps;
    cfg.eval.every = steps;
    cfg.eval.samples = 2048;
    cfg.fav.ref_pool = 50_000;
    let s = summary(fav_trainer::run(&cfg, &dir.join("run"), &mut Quiet).expect("job runs"));
    eprintln!(
        "{family}/{sample_steps}: base kl {:.4} mmd2 {:.5} reward {:.4} -> final kl {:.4} mmd2 {:.5} reward {:.4} (data kl {:.4})",
        s.base.kl,
        s.base.mmd2,
        s.base.reward_mean,
        s.final_.kl,
        s.final_.mmd2,
        s.final_.reward_mean,
        s.base_vs_data.kl
    );
    let _ = std::fs::remove_dir_all(&dir);
    s
}

fn assert_aligned(s: &Summary) {
    assert!(s.final_.kl < 0.9 * s.base.kl, "KL to target did not fall: {:?} -> {:?}", s.base, s.final_);
    assert!(s.final_.mmd2 < 0.7 * s.base.mmd2, "MMD² to target did not fall: {:?} -> {:?}", s.base, s.final_);
    assert!(s.final_.reward_mean > s.base.reward_mean + 0.03, "reward did not rise: {:?} -> {:?}", s.base, s.final_);
    // FAV's own target p_base·r is the base tilted towards reward: on this toy (r spans 0..1 over
    // the clusters) tilting raises the mean reward by ~0.2 and moves it far closer to p_data·r.
    let limit = &s.base_target;
    assert!(limit.reward_mean > s.base.reward_mean + 0.1, "tilted base {limit:?} vs base {:?}", s.base);
    assert!(limit.mmd2 < 0.5 * s.base.mmd2, "tilted base {limit:?} vs base {:?}", s.base);
}

#[test]
fn fav_aligns_the_vae() {
    assert_aligned(&run("vae", 1, 1500, 300));
}

#[test]
fn fav_aligns_the_drift_generator() {
    assert_aligned(&run("drift", 1, 1500, 300));
}

#[test]
fn fav_aligns_two_step_meanflow() {
    assert_aligned(&run("meanflow", 2, 1500, 300));
}

/// Issue 2's goal, on the shipped job (`examples/toy-vae.toml` is `Config::default()`, asserted
/// in `fav-launch`): a base that fits the data (KL ≤ 0.2), then 1500 FAV steps ending at
/// KL ≤ 0.25, MMD² ≤ 0.004 and mean reward ≥ 0.66 against the tilted target. Seed 0 measures
/// 0.200 / 0.0021 / 0.675 (BENCHMARKS.md); the thresholds are the issue's, not tuned to the run.
#[test]
fn the_shipped_vae_job_meets_the_goal() {
    let dir = std::env::temp_dir().join(format!("fav-align-shipped-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::default();
    cfg.pretrain.cache_dir = dir.join("cache").display().to_string();
    let s = summary(fav_trainer::run(&cfg, &dir.join("run"), &mut Quiet).expect("job runs"));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("shipped VAE: data kl {:.4}; base {:?} -> final {:?}", s.base_vs_data.kl, s.base, s.final_);
    assert!(s.base_vs_data.kl <= 0.2, "base does not fit the data: {:?}", s.base_vs_data);
    assert!(s.final_.kl <= 0.25, "KL {:?}", s.final_);
    assert!(s.final_.mmd2 <= 0.004, "MMD² {:?}", s.final_);
    assert!(s.final_.reward_mean >= 0.66, "reward {:?}", s.final_);
}
