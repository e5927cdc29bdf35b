//! The CLIP family of published reward models (spec §7): a vision-transformer image tower and a
//! text tower that load transformers and open_clip checkpoints as users download them, the CLIP
//! BPE tokenizer, the differentiable §7 preprocessing, and the rewards on their features
//! (aesthetic, HPSv2, PickScore, CLIP score, NSFW).
//!
//! A model is a directory (transformers: `config.json`, `model.safetensors` or
//! `pytorch_model.bin`, optionally `preprocessor_config.json`; the hub's open_clip repositories:
//! `open_clip_config.json` with `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`) or
//! a single open_clip checkpoint file with its model config given beside it (HPSv2's `.pt` and
//! open_clip's `ViT-H-14.json`). Nothing is fetched.

pub mod config;
pub mod layouts;
pub mod preprocess;
pub mod score;
pub mod scoring;
pub mod tokenizer;
pub mod tower;

pub use config::{ClipConfig, Layout};
pub use layouts::Towers;
pub use preprocess::Preprocess;
pub use tower::{TextTower, VisionTower};

use crate::weights::{self, read_err, WeightsError};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use std::path::{Path, PathBuf};

/// The towers of one checkpoint, under this project's names.
#[derive(Module, Debug)]
pub struct ClipModel {
    pub vision: Option<VisionTower>,
    pub text: Option<TextTower>,
    /// A classifier on the pooled image features (transformers' ViT).
    pub classifier: Option<Linear>,
}

impl ClipModel {
    /// Random weights of `cfg`'s towers (the ones asked for), to load into.
    pub fn new(cfg: &ClipConfig, towers: Towers, device: &Device) -> Self {
        let vision = cfg.vision.as_ref().filter(|_| towers.vision);
        Self {
            vision: vision.map(|v| VisionTower::new(v, device)),
            text: cfg.text.as_ref().filter(|_| towers.text).map(|t| TextTower::new(t, device)),
            classifier: vision
                .filter(|_| cfg.layout == Layout::Vit)
                .map(|v| LinearConfig::new(v.stack.width, cfg.labels.len()).init(device)),
        }
    }
}

/// A loaded model: its towers, what its config says, how its images are prepared, and the
/// logit scale it was trained with (CLIP models carry one).
#[derive(Debug)]
pub struct Loaded {
    pub model: ClipModel,
    pub config: ClipConfig,
    pub preprocess: Preprocess,
    pub logit_scale: Option<f32>,
    /// The weights file read.
    pub weights: PathBuf,
}

fn read_json(path: &Path) -> Result<serde_json::Value, WeightsError> {
    let text = std::fs::read_to_string(path).map_err(|e| read_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| read_err(path, format!("not JSON: {e}")))
}

/// Where a model's config, weights and preprocessing config are.
struct Files {
    config: PathBuf,
    weights: PathBuf,
    preprocessor: Option<PathBuf>,
}

const CONFIGS: [&str; 2] = ["config.json", "open_clip_config.json"];
const WEIGHTS: [&str; 4] =
    ["model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"];

fn locate(model: &Path, model_config: Option<&Path>) -> Result<Files, WeightsError> {
    if model.is_dir() {
        let first = |names: &[&str]| names.iter().map(|n| model.join(n)).find(|p| p.is_file());
        let config = match model_config {
            Some(c) => c.to_path_buf(),
            None => first(&CONFIGS)
                .ok_or_else(|| read_err(model, format!("no model config: expected one of {CONFIGS:?}")))?,
        };
        let weights =
            first(&WEIGHTS).ok_or_else(|| read_err(model, format!("no weights file: expected one of {WEIGHTS:?}")))?;
        let preprocessor = Some(model.join("preprocessor_config.json")).filter(|p| p.is_file());
        Ok(Files { config, weights, preprocessor })
    } else if model.is_file() {
        let config = model_config.ok_or_else(|| {
            read_err(
                model,
                "a single checkpoint file carries no architecture: give its model config too \
                               (open_clip's model JSON, e.g. ViT-H-14.json, or a transformers config.json)",
            )
        })?;
        Ok(Files { config: config.to_path_buf(), weights: model.to_path_buf(), preprocessor: None })
    } else {
        Err(read_err(model, "no such file or directory"))
    }
}

/// The image mean/std a model's own files give (transformers' `preprocessor_config.json`,
/// open_clip's `preprocess_cfg`), else OpenAI CLIP's.
fn normalisation(files: &Files) -> Result<([f64; 3], [f64; 3]), WeightsError> {
    let triple = |v: Option<&serde_json::Value>, path: &Path, key: &str| -> Result<Option<[f64; 3]>, WeightsError> {
        match v {
            None => Ok(None),
            Some(v) => {
                let xs: Vec<f64> =
                    v.as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
                match xs[..] {
                    [a, b, c] if xs.iter().all(|x| x.is_finite()) => Ok(Some([a, b, c])),
                    _ => Err(read_err(path, format!("{key} = {v} is not three numbers"))),
                }
            }
        }
    };
    let (doc, path) = match &files.preprocessor {
        Some(p) => (read_json(p)?, p.clone()),
        None => {
            let c = read_json(&files.config)?;
            (c.get("preprocess_cfg").cloned().unwrap_or_default(), files.config.clone())
        }
    };
    let (mean_key, std_key) = if files.preprocessor.is_some() { ("image_mean", "image_std") } else { ("mean", "std") };
    let mean = triple(doc.get(mean_key), &path, mean_key)?.unwrap_or(preprocess::CLIP_MEAN);
    let std = triple(doc.get(std_key), &path, std_key)?.unwrap_or(preprocess::CLIP_STD);
    if std.iter().any(|s| *s <= 0.0) {
        return Err(read_err(&path, format!("{std_key} {std:?} must be positive")));
    }
    Ok((mean, std))
}

fn parse_config(files: &Files, towers: Towers) -> Result<ClipConfig, WeightsError> {
    let text = std::fs::read_to_string(&files.config).map_err(|e| read_err(&files.config, e))?;
    let config = ClipConfig::parse(&text).map_err(|e| read_err(&files.config, e))?;
    for (wanted, has, what) in
        [(towers.vision, config.vision.is_some(), "image tower"), (towers.text, config.text.is_some(), "text tower")]
    {
        if wanted && !has {
            return Err(read_err(&files.config, format!("this model has no {what}, which the reward needs")));
        }
    }
    Ok(config)
}

/// The config of the model at `model` (checked to have `towers`) and its weights file, without
/// reading the weights.
pub fn read_config(
    model: &Path,
    model_config: Option<&Path>,
    towers: Towers,
) -> Result<(ClipConfig, PathBuf), WeightsError> {
    let files = locate(model, model_config)?;
    Ok((parse_config(&files, towers)?, files.weights))
}

/// Load the `towers` of the model at `model` (a directory, or a checkpoint file with
/// `model_config`), every size read from its config.
pub fn load(
    model: &Path,
    model_config: Option<&Path>,
    towers: Towers,
    device: &Device,
) -> Result<Loaded, WeightsError> {
    let files = locate(model, model_config)?;
    let config = parse_config(&files, towers)?;
    let module = ClipModel::new(&config, towers, device);
    let model_w = weights::load_mapped(module, &files.weights, &layouts::name_map(config.layout, towers))?;
    let logit_scale = weights::read_tensor(&files.weights, r"(?:state_dict\.|module\.)*logit_scale")?
        .and_then(|v| v.first().copied());
    let (mean, std) = normalisation(&files)?;
    let size = config.vision.as_ref().map(|v| v.image_size).unwrap_or(224);
    Ok(Loaded {
        model: model_w,
        config,
        preprocess: Preprocess { size, mean, std },
        logit_scale,
        weights: files.weights,
    })
}

/// L2-normalise rows (features are compared by cosine; spec §7).
pub fn normalize(f: Tensor<2>) -> Tensor<2> {
    let norm = f.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
    f / norm
}
