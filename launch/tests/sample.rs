//! `fav sample` as an inference user runs it on a downloaded SANA-Sprint pipeline folder (here a
//! tiny random transformer and DC-AE, `scripts/fixtures/sana.py`) and a prompt-embeddings file:
//! given diffusers' initial latents and step noise, the decoded images equal what diffusers'
//! `SanaSprintPipeline` (4 steps) and `AutoencoderDC.decode` give; a PNG per prompt is written;
//! embeddings for another model and a device that cannot be opened are refused, named.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../trainer/tests/data/sana").join(name)
}

fn floats(path: &Path, key: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(key).unwrap().data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// A pipeline folder as diffusers lays it out, from the fixture's components.
fn pipeline(d: &Path) -> PathBuf {
    let p = d.join("pipeline");
    std::fs::create_dir_all(&p).unwrap();
    std::os::unix::fs::symlink(data("transformer"), p.join("transformer")).unwrap();
    std::os::unix::fs::symlink(data("dc_ae_interpolate/vae"), p.join("vae")).unwrap();
    p
}

#[test]
fn samples_the_pipeline_as_diffusers_does() {
    let d = common::tmp("sample", "pipeline");
    let out = d.join("out");
    let st = Command::new(env!("CARGO_BIN_EXE_fav"))
        .args(["sample", "--steps", "4", "--model"])
        .arg(pipeline(&d))
        .arg("--embeddings")
        .arg(data("prompts.safetensors"))
        .arg("--noise")
        .arg(data("sample_noise.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let ours = floats(&out.join("images.safetensors"), "images");
    let want = floats(&data("sample_expected.safetensors"), "images");
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = ours.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    // float32 both sides through 4 transformer passes and the decoder: measured ~1e-6 of scale.
    assert!(err <= 2e-5 * scale, "max error {err} (scale {scale})");
    for p in ["prompt000_sample00.png", "prompt001_sample00.png"] {
        assert!(out.join(p).is_file(), "{p}");
    }
    // With a seed instead: noise of our own, two samples per prompt.
    let st = Command::new(env!("CARGO_BIN_EXE_fav"))
        .args(["sample", "--steps", "2", "--per-prompt", "2", "--seed", "7", "--model"])
        .arg(d.join("pipeline"))
        .arg("--embeddings")
        .arg(data("prompts.safetensors"))
        .arg("--out")
        .arg(d.join("seeded"))
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(floats(&d.join("seeded/images.safetensors"), "images").len(), 4 * 3 * 32 * 32);
}

#[test]
fn refuses_embeddings_for_another_model() {
    let d = common::tmp("sample", "refuse");
    // The noise file is no embeddings file: no "prompts" metadata, named.
    let st = Command::new(env!("CARGO_BIN_EXE_fav"))
        .args(["sample", "--model"])
        .arg(pipeline(&d))
        .arg("--embeddings")
        .arg(data("sample_noise.safetensors"))
        .arg("--out")
        .arg(d.join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(2), "{err}");
    assert!(err.contains("sample_noise.safetensors") && err.contains("prompts"), "{err}");
}

#[test]
fn refuses_a_device_it_cannot_open() {
    let d = common::tmp("sample", "device");
    // A GPU in a build without CUDA (where the cuda build would ask the driver first), and a
    // device that is no device: each an error naming it, nothing written.
    for (device, needle) in [("cuda", "built without CUDA"), ("gpu0", "expected \"cpu\", \"cuda\" or \"cuda:N\"")] {
        let st = Command::new(env!("CARGO_BIN_EXE_fav"))
            .args(["sample", "--device", device, "--model"])
            .arg(pipeline(&d.join(device)))
            .arg("--embeddings")
            .arg(data("prompts.safetensors"))
            .arg("--out")
            .arg(d.join(device).join("out"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&st.stderr);
        assert_eq!(st.status.code(), Some(2), "{device}: {err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{device}: {err}");
        assert!(!d.join(device).join("out").exists(), "{device}");
    }
}
