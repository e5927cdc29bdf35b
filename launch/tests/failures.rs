//! No silent failure (issue 14): a diverged run stops loudly with exit 3 and keeps its last good
//! checkpoint, on one rank and under `mpirun -np 2`; a damaged checkpoint never stops a resume or
//! an export while an intact one exists; a fresh run never mixes with another run's store; and the
//! smaller refusals of bad input, each naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{checkpoints, load, ok};

/// Exit code of a job stopped by a non-finite quantity (README, exit codes).
const EXIT_NONFINITE: i32 = 3;

fn tmp(name: &str) -> PathBuf {
    common::tmp("failures", name)
}

fn fav() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fav"))
}

/// A small toy job with a checkpoint after every step (and an evaluation at the end).
fn train(d: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = fav();
    c.arg("train");
    c.args(common::small_job(d, &["steps=10", "eval.every=100", "checkpoint.every=1", "checkpoint.keep=5"]));
    for kv in extra {
        c.args(["--set", kv]);
    }
    c.arg("--out").arg(out);
    c
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The failing run's promises: exit 3 naming the quantity and step, the good step before it
/// checkpointed with finite weights, nothing after it, no outputs that claim success.
fn assert_stopped_at_step_1(out: &Path, o: &std::process::Output) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(EXIT_NONFINITE), "{err}");
    assert!(err.contains("non-finite") && err.contains("at step 1"), "{err}");
    assert!(err.contains("last good checkpoint is kept"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(checkpoints(out), vec![1], "the step before is the last checkpoint; the failed one is not saved");
    let model = out.join("checkpoints/step-000000000001");
    let model = std::fs::read_dir(&model).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    for (name, values) in load(&model.join("model.safetensors")) {
        assert!(values.iter().all(|v| v.is_finite()), "checkpointed {name} is finite");
    }
    assert!(!out.join("summary.json").exists() && !out.join("final.safetensors").exists(), "no success outputs");
}

/// `fav.lr = 1e5` blows the weights up in one Adam step: step 1's rewards are non-finite.
#[test]
fn a_diverged_run_stops_loudly_and_keeps_its_last_good_checkpoint() {
    let d = tmp("diverge");
    let out = d.join("run");
    let o = train(&d, &out, &["fav.lr=1e5"]).output().unwrap();
    assert_stopped_at_step_1(&out, &o);
    // An evaluation that scores non-finite stops the run too, before that step is saved.
    let evald = d.join("eval");
    let o = train(&d, &evald, &["fav.lr=1e5", "eval.every=1"]).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(EXIT_NONFINITE), "{err}");
    assert!(err.contains("non-finite evaluation at step 1"), "{err}");
    assert_eq!(checkpoints(&evald), Vec::<u64>::new(), "the diverged weights are not saved");
    let metrics = std::fs::read_to_string(evald.join("metrics.jsonl")).unwrap();
    assert!(!metrics.contains("null"), "no NaN line is logged: {metrics}");
    // Resuming repeats the same refusal (noise is a pure function of the step): never a silent pass.
    let o = train(&d, &out, &["fav.lr=1e5"]).output().unwrap();
    assert_eq!(o.status.code(), Some(EXIT_NONFINITE), "{}", stderr(&o));
    assert_eq!(checkpoints(&out), vec![1]);

    // fav.nonfinite = "skip": the non-finite steps are skipped (no update) up to the limit, then
    // the job stops all the same.
    let skip = d.join("skip");
    let o = train(&d, &skip, &["fav.lr=1e5", "fav.nonfinite=\"skip\"", "fav.nonfinite_skips=2"]).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(EXIT_NONFINITE), "{err}");
    assert_eq!(err.matches("step skipped, no update").count(), 2, "{err}");
    assert!(err.contains("at step 3"), "{err}");

    // Other ways to diverge, each named at step 0 before anything is saved.
    for (kv, what) in [("fav.beta=1e308", "total score"), ("fav.temps_kde=[1e-300]", "total score")] {
        let o = train(&d, &d.join(kv.replace(['=', '[', ']'], "_")), &[kv]).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(EXIT_NONFINITE), "{kv}: {err}");
        assert!(err.contains(&format!("non-finite {what} at step 0")), "{kv}: {err}");
    }
}

/// Every rank sees the divergence at the same step and exits 3 alike (no abort, no hang).
#[cfg(feature = "mpi")]
#[test]
fn a_diverged_run_stops_every_rank_under_mpirun() {
    let d = tmp("diverge-mpi");
    let out = d.join("run");
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "2", "--bind-to", "none"]);
    c.arg(env!("CARGO_BIN_EXE_fav")).arg("train");
    c.args(common::small_job(&d, &["steps=10", "eval.every=100", "checkpoint.every=1", "fav.lr=1e5"]));
    c.arg("--out").arg(&out);
    let o = c.output().unwrap();
    assert_stopped_at_step_1(&out, &o);
    assert_eq!(stderr(&o).matches("error: non-finite").count(), 1, "rank 0 reports it once: {}", stderr(&o));
}

/// A base generator file holding NaN is refused at load, naming the file and the tensor; one
/// holding huge values stops the run at step 0 with exit 3.
#[test]
fn a_bad_base_file_is_refused_or_stops_at_once() {
    let d = tmp("base");
    let good = d.join("good");
    ok(train(&d, &good, &["steps=1"]).output().unwrap());
    let cache = std::fs::read_dir(d.join("cache")).unwrap().flatten().next().unwrap().path();
    let bytes = std::fs::read(&cache).unwrap();
    for (name, value, code, must) in
        [("nan", f32::NAN, 2, "NaN or infinite"), ("huge", 1e30, EXIT_NONFINITE, "non-finite")]
    {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                let mut data = t.data().to_vec();
                if n == "layers.1.weight" {
                    data[..4].copy_from_slice(&value.to_le_bytes());
                }
                (n, t.shape().to_vec(), data)
            })
            .collect();
        let views = tensors.iter().map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        });
        let path = d.join(format!("{name}.safetensors"));
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let o = train(&d, &d.join(name), &[&format!("model.base=\"{}\"", path.display())]).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{name}: {err}");
        assert!(err.contains(must) && !err.contains("panicked"), "{name}: {err}");
        if name == "nan" {
            assert!(err.contains("nan.safetensors") && err.contains("layers.1.weight"), "{err}");
        }
    }
}

/// A deleted part of the newest checkpoint: `--resume auto` and `fav export` fall back to the
/// previous complete checkpoint; the next save of that step replaces the damaged one.
#[test]
fn a_damaged_checkpoint_never_stops_a_resume_or_an_export() {
    let d = tmp("damaged");
    let out = d.join("run");
    ok(train(&d, &out, &["steps=3"]).output().unwrap());
    assert_eq!(checkpoints(&out), vec![1, 2, 3]);
    let step3 = out.join("checkpoints/step-000000000003");
    let attempt = std::fs::read_dir(&step3).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    std::fs::remove_file(attempt.join("model.safetensors")).unwrap();
    let exported = d.join("export");
    let o = fav().args(["export", out.join("checkpoints").to_str().unwrap(), "--out"]).arg(&exported).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("exported step 2"), "{text}{}", stderr(&o));
    let err = ok(train(&d, &out, &["steps=5"]).output().unwrap());
    assert!(err.contains("resuming from checkpoint") && err.contains("step=2"), "{err}");
    assert_eq!(checkpoints(&out), vec![1, 2, 3, 4, 5], "step 3 saved again, intact");
}

/// The smaller refusals: each exits 2 naming what is wrong, none panics or hangs.
#[test]
fn smaller_bad_inputs_are_refused_naming_them() {
    let d = tmp("small");
    let refused = |c: &mut Command, must: &[&str]| {
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        for m in must {
            assert!(err.contains(m), "must name {m:?}: {err}");
        }
        assert!(!err.contains("panicked") && !err.contains("allow_partial"), "{err}");
    };
    refused(fav().args(["config", "--set", "seed=1\nsteps=2"]), &["line break"]);
    refused(train(&d, &d.join("r0"), &[]).args(["--ranks", "0"]), &["--ranks 0"]);
    refused(train(&d, &d.join("r1000"), &[]).args(["--ranks", "1000"]), &["--ranks 1000", "fav.batch"]);
    refused(train(&d, &d.join("r2"), &["fav.batch=3"]).args(["--ranks", "2"]), &["fav.batch = 3", "2 ranks"]);
    refused(&mut train(&d, &d.join("dir"), &[&format!("model.base=\"{}\"", d.display())]), &["is a directory"]);
    // A cache folder that cannot be written is found before any pretraining.
    let file = d.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let t = std::time::Instant::now();
    refused(
        &mut train(&d, &d.join("cache"), &[&format!("pretrain.cache_dir=\"{}\"", file.display())]),
        &["pretrain.cache_dir"],
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "refused before pretraining");
    // A FIFO as the config file is refused instead of blocking.
    let fifo = d.join("config.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    refused(fav().arg("config").arg(&fifo), &["not a regular file", "config.toml"]);
}

/// Sizes that cannot fit are refused before any work (no pretraining, no allocation abort),
/// naming the key and the estimate; `fav plan` prints the estimate part by part.
#[test]
fn sizes_that_cannot_fit_are_refused_before_any_work() {
    let d = tmp("sizes");
    let image = ["task=\"image\"", "eval.samples=320"];
    for (extra, key) in [
        (vec!["fav.batch=1000000000000"], "fav.batch"),
        (vec!["eval.samples=100000000000000"], "eval.samples"),
        // (A step backpropagates condition by condition, so `fav.conditions` costs time, not memory.)
        (vec!["fav.ref_pool=100000000000"], "fav.ref_pool"),
        (image.iter().copied().chain(["image.lora_rank=100000"]).collect(), "image.lora_rank"),
    ] {
        let t = std::time::Instant::now();
        let o = train(&d, &d.join(key), &extra).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{key}: {err}");
        assert!(err.contains(&format!("`{key}`")) && !err.contains("panicked"), "{key}: {err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "{key}: refused before pretraining");
        assert!(!d.join("cache").exists(), "{key}: nothing was pretrained");
    }
    let o = fav().args(["plan", "--set", "fav.batch=4096", "--ranks", "2"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for part in [
        "frozen models",
        "optimiser state",
        "activations",
        "kernel tiles",
        "reference pool",
        "evaluation",
        "total per rank",
        "fits",
    ] {
        assert!(text.contains(part), "`fav plan` shows {part}: {text}");
    }
}
