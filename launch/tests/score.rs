//! `fav score` as a user runs it on a downloaded model: an HPSv2-layout checkpoint (open_clip
//! `.pt` in float16 under `state_dict`, with its model JSON) and a PNG; the reward, the features
//! and the pixel gradient equal what open_clip + PyTorch compute for the same file
//! (`scripts/fixtures/clip.py`). Bad input is refused naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn fav() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fav"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/data/clip").join(name)
}

fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect()
}

/// Max |a − b| relative to max |b| (float32 on both sides: ≤ 3e-6 measured; 1e-4 allowed).
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn hpsv2(extra: &[&str]) -> std::process::Output {
    fav()
        .args(["score", "--reward", "hpsv2", "--model"])
        .arg(data("open_clip_tiny.pt"))
        .arg("--model-config")
        .arg(data("open_clip_tiny.json"))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn scores_a_png_as_open_clip_does() {
    let d = common::tmp("score", "hpsv2");
    let (f, g) = (d.join("features.safetensors"), d.join("grad.safetensors"));
    let img = data("score_image.png");
    let st = hpsv2(&[
        "--prompt",
        "a cat, sitting on a sofa, 4k",
        "--features",
        f.to_str().unwrap(),
        "--grad",
        g.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let line: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let want = tensors(&data("score_expected.safetensors"));
    let reward = line["reward"].as_f64().unwrap() as f32;
    assert!((reward - want["reward"][0]).abs() < 1e-5, "{reward} vs {}", want["reward"][0]);
    assert_eq!(line["prompt"], "a cat, sitting on a sofa, 4k");
    assert!(rel_err(&tensors(&f)["0"], &want["features"]) < 1e-4);
    // Saturated pixels (0 and 255) get no gradient, as PyTorch's clamp gives none at its bounds.
    assert!(rel_err(&tensors(&g)["0"], &want["grad"]) < 1e-4);
}

#[test]
fn refuses_bad_input_by_name() {
    let img = data("score_image.png");
    let img = img.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![img], "--prompt"),
        (vec!["--prompt", "x", "/nonexistent.png"], "/nonexistent.png"),
        (vec!["--prompt", "x", data("tokens.json").to_str().unwrap().to_owned().leak()], "tokens.json"),
    ];
    for (args, needle) in cases {
        let st = hpsv2(&args);
        let err = String::from_utf8_lossy(&st.stderr);
        assert_eq!(st.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let st = fav().args(["score", "--reward", "beauty", "--model", "/m", img]).output().unwrap();
    assert!(String::from_utf8_lossy(&st.stderr).contains("aesthetic, hpsv2"), "{st:?}");
    // A checkpoint file without its model config.
    let st =
        fav().args(["score", "--reward", "nsfw", "--model"]).arg(data("open_clip_tiny.pt")).arg(img).output().unwrap();
    assert!(String::from_utf8_lossy(&st.stderr).contains("model config"), "{st:?}");
}
