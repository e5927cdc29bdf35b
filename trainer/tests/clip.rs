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
use fav_trainer::data::Condition;
use fav_trainer::rewards::clip::score::{self, Kind, Source};
use fav_trainer::rewards::clip::{self, tokenizer::Tokenizer, Towers};
use fav_trainer::rewards::ImageReward;
use fav_trainer::tensors::to_vec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

mod common;

fn data(name: &str) -> PathBuf {
    common::crate_dir().join("tests/data/clip").join(name)
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
    let (config, file) = common::manifest(&data(name));
    let cfg = clip::ClipConfig::parse(&config).unwrap();
    let model = clip::ClipModel::new(&cfg, towers, &Device::default());
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

/// A reward's values and their gradient with respect to the pixels (through the feature map)
/// match the fixture on both pixel sets.
fn check_reward(make: impl Fn([usize; 2]) -> ImageReward, fixture_name: &str, cond: Condition) {
    let device = Device::default();
    let fx = fixture(fixture_name);
    for set in ["down", "up"] {
        let (shape, _) = &fx[&format!("{set}.pixels")];
        let r = make([shape[2], shape[3]]);
        let px = tensor4(&fx[&format!("{set}.pixels")], &device).autodiff().require_grad();
        let flat = px.clone().reshape([shape[0], shape[1] * shape[2] * shape[3]]);
        let v = r.reward.value(&r.features.features(flat), cond).unwrap();
        close(&format!("{fixture_name} {set} reward"), &to_vec(&v), &fx[&format!("{set}.reward")].1, 2e-5);
        let g = px.grad(&v.sum().backward()).unwrap();
        close(
            &format!("{fixture_name} {set} reward gradient"),
            &to_vec(&g),
            &fx[&format!("{set}.reward_grad")].1,
            1e-4,
        );
    }
}

fn source(kind: Kind, model: &str, image: [usize; 2]) -> Source {
    Source { kind, model: data(model), model_config: None, head: None, prompts: vec![], raw_prompts: false, image }
}

#[test]
fn aesthetic_heads_match() {
    let device = Device::default();
    for head in ["aesthetic_linear", "aesthetic_mlp"] {
        let make = |image| {
            let src = Source { head: Some(data(&format!("{head}.pth"))), ..source(Kind::Aesthetic, "hf_clip", image) };
            score::build(&src, &device).unwrap()
        };
        check_reward(make, &format!("{head}.safetensors"), Condition::None);
    }
}

#[test]
fn nsfw_probability_matches() {
    let device = Device::default();
    let make = |image| score::build(&source(Kind::Nsfw, "nsfw_vit", image), &device).unwrap();
    check_reward(make, "nsfw_vit.safetensors", Condition::None);
    // Training minimises the probability: the tilt is its negative, and so is the gradient.
    let r = make([32, 32]);
    let f = Tensor::<2>::from_data(TensorData::new(vec![0.3f32; 2 * 32], [2, 32]), &device);
    let (v, t) =
        (to_vec(&r.reward.value(&f, Condition::None).unwrap()), to_vec(&r.reward.tilted(&f, Condition::None).unwrap()));
    assert!(v.iter().zip(&t).all(|(a, b)| (a + b).abs() < 1e-7 && *a > 0.0 && *a < 1.0), "{v:?} {t:?}");
}

#[test]
fn hpsv2_matches_with_its_prompt_rule() {
    let device = Device::default();
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("hpsv2_prompts.json")).unwrap()).unwrap();
    let prompts: Vec<String> = p["prompts"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().into()).collect();
    for (prompt, text) in prompts.iter().zip(p["texts"].as_array().unwrap()) {
        assert_eq!(score::photo_prompt(prompt), text.as_str().unwrap());
    }
    let make = |image| {
        let src = Source {
            model: data("open_clip_tiny.pt"),
            model_config: Some(data("open_clip_tiny.json")),
            prompts: prompts.clone(),
            ..source(Kind::Hpsv2, "", image)
        };
        score::build(&src, &device).unwrap()
    };
    check_reward(make, "open_clip_image.safetensors", Condition::Prompt(0));
    // The raw-prompt flag scores against the prompt itself: a different text, a different reward.
    let raw = score::build(
        &Source {
            model: data("open_clip_tiny.pt"),
            model_config: Some(data("open_clip_tiny.json")),
            prompts: prompts.clone(),
            raw_prompts: true,
            ..source(Kind::Hpsv2, "", [32, 32])
        },
        &device,
    )
    .unwrap();
    let f = clip::normalize(Tensor::<2>::from_data(
        TensorData::new((0..16).map(|i| i as f32).collect::<Vec<_>>(), [1, 16]),
        &device,
    ));
    let a = to_vec(&make([32, 32]).reward.value(&f, Condition::Prompt(0)).unwrap())[0];
    let b = to_vec(&raw.reward.value(&f, Condition::Prompt(0)).unwrap())[0];
    assert!((a - b).abs() > 1e-3, "{a} vs {b}");
    // CLIP score: 100 × the cosine to the prompt as given.
    let cs = score::build(
        &Source {
            model: data("open_clip_tiny.pt"),
            model_config: Some(data("open_clip_tiny.json")),
            prompts: prompts.clone(),
            ..source(Kind::ClipScore, "", [32, 32])
        },
        &device,
    )
    .unwrap();
    let c = to_vec(&cs.reward.value(&f, Condition::Prompt(0)).unwrap())[0];
    assert!((c - 100.0 * b).abs() < 1e-4 * c.abs().max(1.0), "{c} vs 100 × {b}");
}

#[test]
fn pickscore_scales_by_the_models_logit_scale() {
    let device = Device::default();
    let loaded = clip::load(&data("hf_clip"), None, Towers { vision: true, text: true }, &device).unwrap();
    let fx = fixture("hf_clip_text.safetensors");
    assert_eq!(loaded.logit_scale, Some(fx["logit_scale"].1[0]));
    let text =
        clip::normalize(Tensor::<2>::from_data(TensorData::new(fx["text_features"].1.clone(), [3, 16]), &device));
    let scale = f64::from(loaded.logit_scale.unwrap()).exp();
    let make = |image| {
        let base = score::build(&source(Kind::Aesthetic, "hf_clip", image), &device);
        assert!(base.is_err(), "the aesthetic reward without its head is refused");
        let l = clip::load(&data("hf_clip"), None, Towers { vision: true, text: false }, &device).unwrap();
        ImageReward {
            features: Rc::new(score::ClipFeatures {
                tower: l.model.vision.unwrap(),
                preprocess: l.preprocess,
                image,
                normalise: true,
            }),
            reward: Rc::new(score::Similarity { text: text.clone(), scale }),
            activation_floats: 0,
        }
    };
    check_reward(make, "hf_clip_image.safetensors", Condition::Prompt(0));
}

/// Every published reward, built from the tiny fixtures, passes the reward conformance suite.
#[test]
fn published_rewards_conform() {
    use fav_trainer::rewards::conformance;
    let device = Device::default();
    let prompts = vec!["a red cube, studio light".to_string(), "two dogs".to_string()];
    let open_clip = |kind| Source {
        model: data("open_clip_tiny.pt"),
        model_config: Some(data("open_clip_tiny.json")),
        prompts: prompts.clone(),
        ..source(kind, "", [32, 32])
    };
    let all = [
        ("aesthetic", Source { head: Some(data("aesthetic_mlp.pth")), ..source(Kind::Aesthetic, "hf_clip", [32, 32]) }),
        ("hpsv2", open_clip(Kind::Hpsv2)),
        ("clip_score", open_clip(Kind::ClipScore)),
        ("nsfw", source(Kind::Nsfw, "nsfw_vit", [32, 32])),
    ];
    let pixels = Tensor::<2>::from_data(
        TensorData::new(
            (0..2 * 3 * 32 * 32).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect::<Vec<_>>(),
            [2, 3 * 32 * 32],
        ),
        &device,
    );
    for (name, src) in all {
        let r = score::build(&src, &device).unwrap();
        conformance::features_are_differentiable(r.features.as_ref(), &pixels)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = r.features.features(pixels.clone());
        for cond in [Condition::Prompt(0), Condition::Prompt(1)] {
            conformance::values_are_deterministic(r.reward.as_ref(), &x, cond)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            conformance::gradient_matches_nes(r.reward.as_ref(), &x, cond, 1e-3, 4096, 0.97)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// The same image tower saved as transformers' single-tower `CLIPVisionModelWithProjection`, in
/// the older pickled `pytorch_model.bin` with the int64 `position_ids` buffer published files
/// carry: the same features as the two-tower `CLIPModel` directory.
#[test]
fn single_tower_pytorch_bin_loads_like_the_clip_model() {
    check_image(&data("hf_clip_vision"), None, "hf_clip_image.safetensors");
}

/// A model that does not fit its config, or a config this port cannot honour, is refused naming
/// the file and the tensor or key.
#[test]
fn refuses_mismatched_files_and_unsupported_configs() {
    let device = Device::default();
    let both = Towers { vision: true, text: false };
    let err = clip::load(&data("nsfw_vit"), Some(&data("open_clip_tiny.json")), both, &device).unwrap_err().to_string();
    assert!(err.contains("nsfw_vit/model.safetensors") && err.contains("vit.embeddings"), "{err}");
    let dir = std::env::temp_dir().join(format!("fav-clip-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (json, key) in [
        (r#"{"embed_dim": 16, "vision_cfg": {"timm_model_name": "vit_base"}}"#, "vision_cfg.timm_model_name"),
        (r#"{"model_type": "clip", "vision_config": {"hidden_act": "relu"}}"#, "vision_config.hidden_act"),
        (
            r#"{"model_type": "clip", "vision_config": {"hidden_size": 30, "num_attention_heads": 4}}"#,
            "multiple of 4 heads",
        ),
        (r#"{"model_type": "bert"}"#, "model_type"),
    ] {
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, json).unwrap();
        let err = clip::load(&data("open_clip_tiny.pt"), Some(&cfg), both, &device).unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains(key), "{json}: {err}");
    }
}
