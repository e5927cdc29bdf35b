//! Comparing image runs: reward against diversity over training, averaged over the seeds of
//! each method, with best-of-N sampling from the base as the training-free reference — the
//! paper's reward–diversity trade-off, as a PNG and a Markdown table.

use crate::plot;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `(step, reward, diversity)` at each evaluation of a run.
type Trajectory = Vec<(u64, f64, f64)>;

/// A run's trajectory from its `metrics.jsonl`.
fn trajectory(run: &Path) -> Result<Trajectory, String> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display()))?;
            match (v["step"].as_u64(), v["reward_mean"].as_f64(), v["diversity"].as_f64()) {
                (Some(s), Some(r), Some(d)) => Ok((s, r, d)),
                _ => Err(format!("{}: not an image run (no reward_mean/diversity)", path.display())),
            }
        })
        .collect()
}

/// Write the trade-off plot of `runs` (image run directories) to `png`; returns a Markdown
/// table: per method, the mean (± seed-to-seed standard deviation) of base and final reward
/// and diversity, and best-of-N from the first run.
pub fn tradeoff(runs: &[PathBuf], png: &Path) -> Result<String, String> {
    if runs.is_empty() {
        return Err("name at least one run directory".into());
    }
    // method → runs' (summary, trajectory)
    let mut by_method: BTreeMap<String, Vec<(Value, Trajectory)>> = BTreeMap::new();
    for run in runs {
        let s = read_json(&run.join("summary.json"))?;
        let key = format!(
            "{} {} {}",
            s["method"].as_str().unwrap_or("?"),
            s["reward"].as_str().unwrap_or("?"),
            s["family"].as_str().unwrap_or("gan")
        );
        by_method.entry(key).or_default().push((s, trajectory(run)?));
    }
    let mut series = Vec::new();
    let mut table = String::from(
        "| method, reward, family | seeds | base reward | final reward | gain | base diversity | final diversity | \
         base class acc. | final class acc. |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (key, group) in &by_method {
        // Mean over seeds at each step all of them evaluated.
        let mut steps: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
        for (_, traj) in group {
            for &(s, r, d) in traj {
                steps.entry(s).or_default().push((r, d));
            }
        }
        let pts: Vec<(f64, f64)> = steps
            .values()
            .filter(|v| v.len() == group.len())
            .map(|v| (mean(v.iter().map(|p| p.0)), mean(v.iter().map(|p| p.1))))
            .collect();
        series.push((key.to_uppercase().replace('_', " "), pts));
        let field = |which: &str, what: &str| -> Vec<f64> {
            group.iter().filter_map(|(s, _)| s[which][what].as_f64()).collect()
        };
        let gain: Vec<f64> =
            field("final", "reward_mean").iter().zip(field("base", "reward_mean")).map(|(f, b)| f - b).collect();
        table += &format!(
            "| {key} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            group.len(),
            pm(&field("base", "reward_mean")),
            pm(&field("final", "reward_mean")),
            pm(&gain),
            pm(&field("base", "diversity")),
            pm(&field("final", "diversity")),
            pm(&field("base", "class_accuracy")),
            pm(&field("final", "class_accuracy")),
        );
    }
    let first = read_json(&runs[0].join("summary.json"))?;
    let best: Vec<(f64, f64)> = first["best_of_n"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| Some((b["reward_mean"].as_f64()?, b["diversity"].as_f64()?))).collect())
        .unwrap_or_default();
    if !best.is_empty() {
        let base = (
            first["base"]["reward_mean"].as_f64().unwrap_or(f64::NAN),
            first["base"]["diversity"].as_f64().unwrap_or(f64::NAN),
        );
        let mut pts = vec![base];
        pts.extend(best.iter().copied());
        series.push(("BEST OF N".into(), pts));
        table +=
            "\nBest-of-N from the base (first run's evaluation slots):\n\n| N | reward | diversity |\n|---|---|---|\n";
        for b in first["best_of_n"].as_array().into_iter().flatten() {
            table += &format!(
                "| {} | {:.4} | {:.4} |\n",
                b["n"],
                b["reward_mean"].as_f64().unwrap_or(f64::NAN),
                b["diversity"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let refs: Vec<(&str, Vec<(f64, f64)>)> = series.iter().map(|(l, p)| (l.as_str(), p.clone())).collect();
    plot::xy("REWARD X  DIVERSITY Y", &refs, png)?;
    Ok(table)
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = it.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// `mean ± sd` (sample standard deviation over seeds).
fn pm(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into(); // runs made before the field existed
    }
    let m = mean(v.iter().copied());
    if v.len() < 2 {
        return format!("{m:.4}");
    }
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
    format!("{m:.4} ± {sd:.4}")
}
