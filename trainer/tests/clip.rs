//! The CLIP-family towers against the libraries that define them: fixtures written by
//! `scripts/fixtures/clip.py` from tiny random transformers / open_clip models (weights saved as
//! users download the published ones), compared value by value; and the full-size published
//! checkpoints' name/shape manifests, which the importer must map completely.
//!
//! Tolerances: the towers run in float32 like the references, but sum in a different order
//! (matmul blocking, a patch matmul for PyTorch's convolution, two resize matmuls for PyTorch's
//! separable kernel): measured, features differ by ≤ 7e-7 of their largest magnitude and input
//! gradients by ≤ 3e-6 of theirs. Features are compared at 2e-5 and gradients (which pass back
//! through softmax, LayerNorm and the normalisation) at 1e-4 of their largest magnitude: a wrong
//! activation, eps, scale, pooling position, transposed or mis-split weight, or resize kernel is
//! off by 1e-2 or more.

use burn::tensor::{Device, Tensor, TensorData};
use fav_trainer::rewards::clip::{self, tokenizer::Tokenizer, Towers};
use fav_trainer::tensors::to_vec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clip").join(name)
}

/// A fixture file's tensors as (shape, f32 values).
fn fixture(name: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(data(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let vals: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F32 => {
                    v.data().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
                }
                safetensors::Dtype::I32 => {
                    v.data().chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect()
                }
                d => panic!("{d:?}"),
            };
            (n, (v.shape().to_vec(), vals))
        })
        .collect()
}

fn tensor4(t: &(Vec<usize>, Vec<f32>), device: &Device) -> Tensor<4> {
    let s = &t.0;
    Tensor::from_data(TensorData::new(t.1.clone(), [s[0], s[1], s[2], s[3]]), device)
}

/// `max |a − b| ≤ rel · max |b|`, with the figures in the message.
fn close(what: &str, a: &[f32], b: &[f32], rel: f32) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(err <= rel * scale, "{what}: max error {err:e} > {rel:e} × {scale:e}");
    eprintln!("{what}: max error {err:.3e} (scale {scale:.3e})");
}

/// The image tower of a fixture model matches features and input gradients on every pixel set.
fn check_image(model: &Path, config: Option<&Path>, fixture_name: &str) {
    let device = Device::default();
    let loaded = clip::load(model, config, Towers { vision: true, text: false }, &device).unwrap();
    let tower = loaded.model.vision.as_ref().unwrap();
    let fx = fixture(fixture_name);
    for set in ["down", "up"] {
        let px = tensor4(&fx[&format!("{set}.pixels")], &device).autodiff().require_grad();
        let f = tower.forward(loaded.preprocess.apply(px.clone()));
        close(&format!("{fixture_name} {set} features"), &to_vec(&f), &fx[&format!("{set}.features")].1, 2e-5);
        let (cs, cv) = &fx[&format!("{set}.cotangent")];
        let cot = Tensor::<2>::from_data(TensorData::new(cv.clone(), [cs[0], cs[1]]), &device);
        let grads = (clip::normalize(f) * cot).sum().backward();
        let g = px.grad(&grads).unwrap();
        close(&format!("{fixture_name} {set} input gradient"), &to_vec(&g), &fx[&format!("{set}.grad")].1, 1e-4);
    }
}

#[test]
fn transformers_clip_image_tower_matches() {
    check_image(&data("hf_clip"), None, "hf_clip_image.safetensors");
}

#[test]
fn open_clip_image_tower_matches() {
    check_image(&data("open_clip_tiny.pt"), Some(&data("open_clip_tiny.json")), "open_clip_image.safetensors");
}

#[test]
fn vit_classifier_tower_matches() {
    check_image(&data("nsfw_vit"), None, "nsfw_vit.safetensors");
}

fn check_text(model: &Path, config: Option<&Path>, fixture_name: &str) {
    let device = Device::default();
    let loaded = clip::load(model, config, Towers { vision: false, text: true }, &device).unwrap();
    let tower = loaded.model.text.as_ref().unwrap();
    let fx = fixture(fixture_name);
    let (s, ids) = &fx["ids"];
    let rows: Vec<Vec<u32>> = ids.chunks(s[1]).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
    close(&format!("{fixture_name} text features"), &to_vec(&tower.forward(&rows)), &fx["text_features"].1, 2e-5);
}

#[test]
fn transformers_clip_text_tower_matches() {
    check_text(&data("hf_clip"), None, "hf_clip_text.safetensors");
}

#[test]
fn open_clip_text_tower_matches() {
    check_text(&data("open_clip_tiny.pt"), Some(&data("open_clip_tiny.json")), "open_clip_text.safetensors");
}

#[test]
fn tokenizer_matches_open_clip() {
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data("tokens.json")).unwrap()).unwrap();
    let tok = Tokenizer::clip();
    for (p, ids) in fx["prompts"].as_array().unwrap().iter().zip(fx["ids"].as_array().unwrap()) {
        let want: Vec<u32> = ids.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.tokenize(p.as_str().unwrap(), 77), want, "prompt {p}");
    }
}

/// A full-size published checkpoint's names and shapes (from its manifest) map completely onto
/// the towers built from its own config, without loading (or allocating) its weights.
fn check_manifest(name: &str, towers: Towers) {
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap();
    let cfg = clip::ClipConfig::parse(&m["config"].to_string()).unwrap();
    let model = clip::ClipModel::new(&cfg, towers, &Device::default());
    let file: Vec<(String, Vec<usize>)> = m["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, s)| (n.clone(), s.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
        .collect();
    let map = clip::layouts::name_map(cfg.layout, towers);
    fav_trainer::weights::check_shapes(&model, &file, &map).unwrap_or_else(|e| panic!("{name}: {e}"));
    // And the check has teeth: one tensor the wrong shape is refused, naming it.
    let mut bad = file.clone();
    let mlp_in = |n: &str| ["fc1.weight", "c_fc.weight", "intermediate.dense.weight"].iter().any(|m| n.ends_with(m));
    let image = |n: &str| ["vision_model.", "visual.", "vit."].iter().any(|m| n.starts_with(m));
    let i = bad.iter().position(|(n, _)| mlp_in(n) && image(n)).unwrap();
    bad[i].1[0] += 1;
    let err = fav_trainer::weights::check_shapes(&model, &bad, &map).unwrap_err();
    assert!(err.contains(&bad[i].0), "{err}");
}

const BOTH: Towers = Towers { vision: true, text: true };

#[test]
fn full_size_manifests_map_completely() {
    check_manifest("manifest_clip_vit_large_patch14.json", BOTH);
    check_manifest("manifest_clip_vit_large_patch14.json", Towers { vision: true, text: false });
    check_manifest("manifest_pickscore_v1.json", BOTH);
    check_manifest("manifest_open_clip_vit_h_14.json", BOTH);
    check_manifest("manifest_open_clip_vit_h_14.json", Towers { vision: true, text: false });
    check_manifest("manifest_nsfw_vit_base_patch16_224.json", Towers { vision: true, text: false });
}
