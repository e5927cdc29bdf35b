//! The published rewards on CLIP-family features (spec §7), each a [`FeatureMap`] (§7
//! preprocessing → image tower → L2-normalised features, or the ViT's class token) and a
//! condition-aware [`Reward`] on those features:
//!
//! | kind | model | particle | `r(f)` |
//! |---|---|---|---|
//! | `aesthetic` | CLIP ViT-L/14 + LAION head | normalised image features | the head (v1 linear or the improved MLP) |
//! | `hpsv2` | open_clip ViT-H/14 (HPSv2) | normalised image features | `⟨f, t_c⟩`, `t_c` of `"a photo of a " + prompt up to its first comma` |
//! | `pickscore` | transformers CLIP ViT-H/14 (PickScore_v1) | normalised image features | `exp(logit_scale)·⟨f, t_c⟩` |
//! | `clip_score` | any CLIP | normalised image features | `100·⟨f, t_c⟩` |
//! | `nsfw` | transformers ViT classifier | class token after the last norm | `softmax(W f + b)[nsfw]`; training tilts by `−r` |
//!
//! Text features are computed once per prompt when the reward is built; the text tower is then
//! dropped. A condition picks its prompt: `Prompt(i)` and `Class(i)` the i-th, `None` the first.

use super::config::VisionConfig;
use super::tokenizer::Tokenizer;
use super::{load, normalize, ClipConfig, ClipModel, Preprocess, Towers, VisionTower};
use crate::data::Condition;
use crate::rewards::{autodiff_grad, FeatureMap, ImageReward, Reward};
use crate::tensors::DeviceError;
use crate::weights::{self, read_err, NameMap, WeightsError};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The published rewards by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Aesthetic,
    Hpsv2,
    PickScore,
    ClipScore,
    Nsfw,
}

impl Kind {
    pub const ALL: [(&'static str, Kind); 5] = [
        ("aesthetic", Kind::Aesthetic),
        ("hpsv2", Kind::Hpsv2),
        ("pickscore", Kind::PickScore),
        ("clip_score", Kind::ClipScore),
        ("nsfw", Kind::Nsfw),
    ];

    pub fn parse(name: &str) -> Option<Kind> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// Whether the reward reads the prompt.
    pub fn needs_text(self) -> bool {
        matches!(self, Kind::Hpsv2 | Kind::PickScore | Kind::ClipScore)
    }
}

/// What a published reward is built from: files the user downloaded, and the prompts.
#[derive(Clone, Debug)]
pub struct Source {
    pub kind: Kind,
    /// A model directory or checkpoint file.
    pub model: PathBuf,
    /// The model config, for a checkpoint file (open_clip's model JSON).
    pub model_config: Option<PathBuf>,
    /// The aesthetic head (LAION's `.pth`, or safetensors).
    pub head: Option<PathBuf>,
    /// Prompts, indexed by the condition.
    pub prompts: Vec<String>,
    /// HPSv2: score against the prompt as given, not "a photo of a …".
    pub raw_prompts: bool,
    /// The size `[height, width]` of the images the feature map receives.
    pub image: [usize; 2],
}

/// HPSv2's text for a prompt (spec §7.1): "a photo of a " + the prompt up to its first comma,
/// trimmed.
pub fn photo_prompt(prompt: &str) -> String {
    format!("a photo of a {}", prompt.split(',').next().unwrap_or("").trim())
}

/// φ: images (flattened `[3, h, w]` rows in [−1, 1]) → the tower's features, L2-normalised
/// unless the reward reads the raw class token.
pub struct ClipFeatures {
    pub tower: VisionTower,
    pub preprocess: Preprocess,
    pub image: [usize; 2],
    pub normalise: bool,
}

impl ClipFeatures {
    /// φ of images of `size` (flattened `[3, size]` rows): the preprocessing resizes any size.
    pub fn of_size(&self, samples: Tensor<2>, size: [usize; 2]) -> Tensor<2> {
        let n = samples.dims()[0];
        let f = self.tower.forward(self.preprocess.apply(samples.reshape([n, 3, size[0], size[1]])));
        if self.normalise {
            normalize(f)
        } else {
            f
        }
    }
}

impl FeatureMap for ClipFeatures {
    fn features(&self, samples: Tensor<2>) -> Tensor<2> {
        self.of_size(samples, self.image)
    }
}

/// `scale·⟨f, t_c⟩` with `t_c` the normalised text features of the condition's prompt.
pub struct Similarity {
    /// `[prompts, D]`, normalised.
    pub text: Tensor<2>,
    pub scale: f64,
}

impl Similarity {
    fn row(&self, cond: Condition) -> Tensor<2> {
        let i = cond.prompt_index();
        let [p, d] = self.text.dims();
        assert!(i < p, "condition {cond:?} has no prompt: {p} prompt(s) were given");
        self.text.clone().narrow(0, i, 1).reshape([d, 1])
    }

    fn similarity(&self, x: Tensor<2>, cond: Condition) -> Tensor<2> {
        x.matmul(self.row(cond)).mul_scalar(self.scale)
    }
}

impl Reward for Similarity {
    fn value(&self, x: &Tensor<2>, cond: Condition) -> Result<Tensor<2>, DeviceError> {
        Ok(self.similarity(x.clone(), cond))
    }

    fn grad(&self, x: &Tensor<2>, cond: Condition) -> Option<Tensor<2>> {
        Some(autodiff_grad(x, |f| self.similarity(f, cond)))
    }
}

/// LAION's aesthetic heads: linear layers in sequence with nothing between (the v1 head is one
/// layer; the improved MLP's dropouts are inactive at inference).
#[derive(Module, Debug)]
pub struct Head {
    pub layers: Vec<Linear>,
}

impl Head {
    /// Load a head file (`weight`/`bias`, or `layers.N.weight`/`bias` with N as saved), its
    /// sizes read from the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self, WeightsError> {
        let bad = |reason: String| read_err(path, reason);
        let shapes = weights::read_shapes(path)?;
        let mut layers: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut map = NameMap::default().pytorch_layout();
        for (name, shape) in &shapes {
            let Some(prefix) = name.strip_suffix(".weight").or((name == "weight").then_some("")) else { continue };
            let index = match prefix {
                "" => 0,
                p => p
                    .strip_prefix("layers.")
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(|| bad(format!("tensor {name}: expected `weight` or `layers.N.weight`")))?,
            };
            if shape.len() != 2 {
                return Err(bad(format!("tensor {name} of shape {shape:?} is not a linear layer's weight")));
            }
            layers.push((index, shape.clone()));
        }
        layers.sort();
        if layers.is_empty() {
            return Err(bad("no linear layer (`weight` or `layers.N.weight`) in the head".into()));
        }
        let mut linears = Vec::new();
        for (k, (index, shape)) in layers.iter().enumerate() {
            let from = if shapes.iter().any(|(n, _)| n == "weight") {
                String::from("^")
            } else {
                format!(r"^layers\.{index}\.")
            };
            map = map.rename(format!("{from}(weight|bias)$"), format!("layers.{k}.$1"));
            if k > 0 && layers[k - 1].1[0] != shape[1] {
                return Err(bad(format!(
                    "layer {index} takes {} inputs, the one before gives {}",
                    shape[1],
                    layers[k - 1].1[0]
                )));
            }
            linears.push(LinearConfig::new(shape[1], shape[0]).init(device));
        }
        if layers.last().map(|(_, s)| s[0]) != Some(1) {
            return Err(bad("the head's last layer must give one score".into()));
        }
        weights::load_mapped(Head { layers: linears }, path, &map)
    }

    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for l in &self.layers {
            x = l.forward(x);
        }
        x
    }

    /// The width of the features the head takes.
    pub fn input(&self) -> usize {
        self.layers[0].weight.dims()[0]
    }
}

impl Reward for Head {
    fn value(&self, x: &Tensor<2>, _: Condition) -> Result<Tensor<2>, DeviceError> {
        Ok(self.forward(x.clone()))
    }

    fn grad(&self, x: &Tensor<2>, _: Condition) -> Option<Tensor<2>> {
        Some(autodiff_grad(x, |f| self.forward(f)))
    }
}

/// The probability of one class of a classifier on the features; training tilts by its
/// negative (minimising it), evaluation reports it.
pub struct Classifier {
    pub linear: Linear,
    pub index: usize,
}

impl Classifier {
    fn prob(&self, x: Tensor<2>) -> Tensor<2> {
        softmax(self.linear.forward(x), 1).narrow(1, self.index, 1)
    }
}

impl Reward for Classifier {
    fn value(&self, x: &Tensor<2>, _: Condition) -> Result<Tensor<2>, DeviceError> {
        Ok(self.prob(x.clone()))
    }

    fn tilted(&self, x: &Tensor<2>, _: Condition) -> Result<Tensor<2>, DeviceError> {
        Ok(self.prob(x.clone()).neg())
    }

    fn grad(&self, x: &Tensor<2>, _: Condition) -> Option<Tensor<2>> {
        Some(autodiff_grad(x, |f| self.prob(f).neg()))
    }
}

/// Floats the tower keeps per image for the backward pass, roughly: per block the inputs of
/// both norms, q, k, v, the attention weights, the attention output, the MLP's hidden layer
/// twice; plus the image before and after preprocessing (`fav plan`).
fn activation_floats(v: &VisionConfig, image: [usize; 2]) -> usize {
    let tokens = (v.image_size / v.patch_size).pow(2) + 1;
    let s = &v.stack;
    s.layers * (tokens * (7 * s.width + 2 * s.mlp) + s.heads * tokens * tokens)
        + 3 * (image[0] * image[1] + v.image_size.pow(2))
}

/// The image tower's parameter count, from its config.
fn tower_params(v: &VisionConfig) -> usize {
    let (w, s) = (v.stack.width, &v.stack);
    let tokens = (v.image_size / v.patch_size).pow(2) + 1;
    let block = 4 * (w * w + w) + 2 * w * s.mlp + s.mlp + w + 4 * w;
    3 * v.patch_size.pow(2) * w + (tokens + 1) * w + s.layers * block + 4 * w + v.proj.map_or(0, |d| w * d)
}

/// What `fav plan` needs of a published reward, from its config alone (no weights read): the
/// particle dimension, the activation floats per image, the parameters of the image tower.
pub fn describe(src: &Source) -> Result<(usize, usize, usize), WeightsError> {
    let (config, _) = check(src)?;
    let v = config.vision.as_ref().expect("checked: an image tower");
    let d = if src.kind == Kind::Nsfw { v.stack.width } else { v.proj.unwrap_or(v.stack.width) };
    Ok((d, activation_floats(v, src.image), tower_params(v)))
}

/// Refuse a source whose files are missing or whose config is not a model the reward can use —
/// without reading its weights (configuration checks run before any work).
pub fn check(src: &Source) -> Result<(ClipConfig, PathBuf), WeightsError> {
    let towers = Towers { vision: true, text: src.kind.needs_text() };
    let (config, weights) = super::read_config(&src.model, src.model_config.as_deref(), towers)?;
    let bad = |reason: &str| read_err(&weights, reason);
    match src.kind {
        Kind::Aesthetic => match &src.head {
            Some(h) if h.is_file() => {}
            Some(h) => return Err(read_err(h, "no such file")),
            None => return Err(bad("the aesthetic reward needs its head file")),
        },
        Kind::Nsfw if !config.labels.iter().any(|l| l.eq_ignore_ascii_case("nsfw")) => {
            return Err(bad(&format!("no \"nsfw\" label among the classifier's {:?}", config.labels)))
        }
        k if k.needs_text() && src.prompts.is_empty() => return Err(bad("this reward needs at least one prompt")),
        _ => {}
    }
    Ok((config, weights))
}

/// Build the published reward `src` describes, reading its files (nothing is fetched).
pub fn build(src: &Source, device: &Device) -> Result<ImageReward, WeightsError> {
    let (features, reward, activation_floats) = build_parts(src, device)?;
    Ok(ImageReward { features: Rc::new(features), reward, activation_floats })
}

/// [`build`]'s parts: the feature map as itself (to take images of other sizes), the reward,
/// the activation floats.
pub fn build_parts(src: &Source, device: &Device) -> Result<(ClipFeatures, Rc<dyn Reward>, usize), WeightsError> {
    let towers = Towers { vision: true, text: src.kind.needs_text() };
    let loaded = load(&src.model, src.model_config.as_deref(), towers, device)?;
    let model_err = |reason: String| read_err(&loaded.weights, reason);
    let activation_floats = activation_floats(loaded.config.vision.as_ref().expect("an image tower"), src.image);
    let ClipModel { vision, text, classifier } = loaded.model;
    let tower = vision.expect("loaded with its image tower");
    let width = tower.proj.as_ref().map(|p| p.weight.dims()[1]).unwrap_or(tower.cls.dims()[0]);
    let reward: Rc<dyn Reward> = match src.kind {
        Kind::Aesthetic => {
            let head_path =
                src.head.as_ref().ok_or_else(|| model_err("the aesthetic reward needs its head file".into()))?;
            let head = Head::load(head_path, device)?;
            if head.input() != width {
                return Err(read_err(
                    head_path,
                    format!("the head takes {} features, the image tower gives {width}", head.input()),
                ));
            }
            Rc::new(head)
        }
        Kind::Nsfw => {
            let labels = &loaded.config.labels;
            let index = labels
                .iter()
                .position(|l| l.eq_ignore_ascii_case("nsfw"))
                .ok_or_else(|| model_err(format!("no \"nsfw\" label among the classifier's {labels:?}")))?;
            Rc::new(Classifier { linear: classifier.ok_or_else(|| model_err("no classifier head".into()))?, index })
        }
        kind => {
            let text = text.expect("loaded with its text tower");
            if src.prompts.is_empty() {
                return Err(model_err(format!("the {kind:?} reward needs at least one prompt")));
            }
            let texts: Vec<String> = src
                .prompts
                .iter()
                .map(|p| if kind == Kind::Hpsv2 && !src.raw_prompts { photo_prompt(p) } else { p.clone() })
                .collect();
            let features = text_features(&text, &texts).map_err(model_err)?;
            let scale = match kind {
                Kind::PickScore => {
                    f64::from(loaded.logit_scale.ok_or_else(|| model_err("no logit_scale".into()))?).exp()
                }
                Kind::ClipScore => 100.0,
                _ => 1.0,
            };
            Rc::new(Similarity { text: normalize(features), scale })
        }
    };
    let features =
        ClipFeatures { tower, preprocess: loaded.preprocess, image: src.image, normalise: src.kind != Kind::Nsfw };
    Ok((features, reward, activation_floats))
}

/// The text tower's features of `texts` (tokenized with the CLIP vocabulary), in batches.
pub fn text_features(tower: &super::TextTower, texts: &[String]) -> Result<Tensor<2>, String> {
    let tok = Tokenizer::clip();
    let vocab = tower.token.weight.dims()[0];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.tokenize(t, tower.context())).collect();
    if let Some((t, id)) =
        texts.iter().zip(&ids).find_map(|(t, r)| r.iter().find(|&&i| i as usize >= vocab).map(|i| (t, i)))
    {
        return Err(format!("prompt {t:?} has token {id}, beyond the text tower's vocabulary of {vocab}"));
    }
    Ok(Tensor::cat(ids.chunks(64).map(|c| tower.forward(c)).collect(), 0))
}
