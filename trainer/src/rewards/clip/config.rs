//! Tower sizes, read from the model's own config: a transformers `config.json` (`CLIPModel`,
//! `CLIPVisionModelWithProjection`, `CLIPTextModelWithProjection`, `ViTForImageClassification`)
//! or an open_clip model config (`{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}`, alone
//! or under `model_cfg` as the hub's `open_clip_config.json` has it). A key the file leaves out
//! takes the library's default, so a tiny config and ViT-H/14 go through the same code; a feature
//! this port does not implement is refused naming its key.

use serde_json::{Map, Value};

/// One pre-norm transformer stack (both towers).
#[derive(Clone, Debug, PartialEq)]
pub struct StackConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp: usize,
    pub eps: f64,
    /// `x·σ(1.702x)` (OpenAI CLIP) rather than the exact GELU.
    pub quick_gelu: bool,
}

/// The image tower.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub stack: StackConfig,
    pub image_size: usize,
    pub patch_size: usize,
    /// The patch convolution has a bias (transformers' ViT; CLIP's has none).
    pub patch_bias: bool,
    /// A LayerNorm before the stack (CLIP's `ln_pre` / `pre_layrnorm`; ViT has none).
    pub ln_pre: bool,
    /// Width of the projection after pooling (`None`: the pooled token is the feature).
    pub proj: Option<usize>,
}

/// The text tower.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub stack: StackConfig,
    pub vocab: usize,
    /// Context length (77 for CLIP).
    pub context: usize,
    pub proj: Option<usize>,
    /// Pool at the first occurrence of this id; `None`: at the largest id (the end token, as
    /// open_clip and transformers' legacy `eos_token_id = 2` configs do).
    pub eos: Option<usize>,
}

/// Which published layout a checkpoint uses (names and packing of its tensors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// transformers `CLIPModel` and its single-tower variants.
    Transformers,
    /// open_clip `CLIP` (HPSv2).
    OpenClip,
    /// transformers `ViTForImageClassification` (the NSFW classifier).
    Vit,
}

/// A model's towers as its config describes them.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub layout: Layout,
    pub vision: Option<VisionConfig>,
    pub text: Option<TextConfig>,
    /// Class labels of a classifier head (ViT), in index order.
    pub labels: Vec<String>,
}

/// A config key's value, with the library's default when absent; `Err` names the key.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Keys<'a> {
    fn new(v: &'a Value, prefix: &'a str) -> Result<Self, String> {
        v.as_object().map(|obj| Self { obj, prefix }).ok_or_else(|| format!("{prefix} is not a JSON object"))
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| format!("{}{key} = {v} is not a positive integer", self.prefix)),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("{}{key} = {v} is not a number", self.prefix)),
        }
    }

    fn str(&self, key: &str, default: &'a str) -> Result<&'a str, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| format!("{}{key} = {v} is not a string", self.prefix)),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| format!("{}{key} = {v} is not true or false", self.prefix)),
        }
    }

    /// Refuse a key set to something other than its default this port implements.
    fn unsupported(&self, key: &str, ok: impl Fn(&Value) -> bool) -> Result<(), String> {
        match self.obj.get(key) {
            Some(v) if !v.is_null() && !ok(v) => {
                Err(format!("{}{key} = {v} is not supported by this port of the tower", self.prefix))
            }
            _ => Ok(()),
        }
    }

    fn sub(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
}

fn activation(name: &str, key: &str) -> Result<bool, String> {
    match name {
        "quick_gelu" => Ok(true),
        "gelu" => Ok(false),
        other => Err(format!("{key} = {other:?}: only \"gelu\" and \"quick_gelu\" are implemented")),
    }
}

impl ClipConfig {
    /// Parse a transformers `config.json` or an open_clip model config.
    pub fn parse(json: &str) -> Result<Self, String> {
        let cfg = Self::parse_unchecked(json)?;
        cfg.check()?;
        Ok(cfg)
    }

    fn parse_unchecked(json: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let top = Keys::new(&v, "")?;
        if let Some(model_cfg) = top.sub("model_cfg") {
            return Self::open_clip(model_cfg, "model_cfg.");
        }
        if top.sub("vision_cfg").is_some() || top.sub("text_cfg").is_some() {
            return Self::open_clip(&v, "");
        }
        match top.str("model_type", "")? {
            "clip" => Self::transformers_clip(&top),
            "clip_vision_model" => Ok(Self {
                layout: Layout::Transformers,
                vision: Some(hf_vision(&top, top.usize("projection_dim", 512)?)?),
                text: None,
                labels: vec![],
            }),
            "clip_text_model" => Ok(Self {
                layout: Layout::Transformers,
                vision: None,
                text: Some(hf_text(&top, top.usize("projection_dim", 512)?)?),
                labels: vec![],
            }),
            "vit" => Self::vit(&top),
            "" => Err("neither a transformers config (no model_type) nor an open_clip model config \
                       (no vision_cfg / text_cfg / model_cfg)"
                .into()),
            other => Err(format!(
                "model_type = {other:?}: expected \"clip\", \"clip_vision_model\", \
                                  \"clip_text_model\" or \"vit\""
            )),
        }
    }

    fn transformers_clip(top: &Keys) -> Result<Self, String> {
        let proj = top.usize("projection_dim", 512)?;
        let empty = Value::Object(Map::new());
        let vision = Keys::new(top.sub("vision_config").unwrap_or(&empty), "vision_config.")?;
        let text = Keys::new(top.sub("text_config").unwrap_or(&empty), "text_config.")?;
        Ok(Self {
            layout: Layout::Transformers,
            vision: Some(hf_vision(&vision, proj)?),
            text: Some(hf_text(&text, proj)?),
            labels: vec![],
        })
    }

    fn vit(top: &Keys) -> Result<Self, String> {
        top.unsupported("qkv_bias", |v| v == &Value::Bool(true))?;
        let width = top.usize("hidden_size", 768)?;
        let vision = VisionConfig {
            stack: StackConfig {
                width,
                layers: top.usize("num_hidden_layers", 12)?,
                heads: top.usize("num_attention_heads", 12)?,
                mlp: top.usize("intermediate_size", 3072)?,
                eps: top.f64("layer_norm_eps", 1e-12)?,
                quick_gelu: activation(top.str("hidden_act", "gelu")?, "hidden_act")?,
            },
            image_size: top.usize("image_size", 224)?,
            patch_size: top.usize("patch_size", 16)?,
            patch_bias: true,
            ln_pre: false,
            proj: None,
        };
        let labels = match top.sub("id2label").and_then(Value::as_object) {
            Some(m) => {
                let mut l: Vec<(usize, String)> = m
                    .iter()
                    .map(|(k, v)| {
                        let i = k.parse().map_err(|_| format!("id2label key {k:?} is not an index"))?;
                        Ok((i, v.as_str().unwrap_or_default().to_string()))
                    })
                    .collect::<Result<_, String>>()?;
                l.sort();
                if l.iter().enumerate().any(|(i, (k, _))| i != *k) {
                    return Err("id2label does not number its labels 0, 1, …".into());
                }
                l.into_iter().map(|(_, s)| s).collect()
            }
            None => vec!["LABEL_0".into(), "LABEL_1".into()],
        };
        Ok(Self { layout: Layout::Vit, vision: Some(vision), text: None, labels })
    }

    fn open_clip(v: &Value, prefix: &str) -> Result<Self, String> {
        let top = Keys::new(v, prefix)?;
        let embed = top.usize("embed_dim", 512)?;
        let quick_gelu = top.bool("quick_gelu", false)?;
        let vision = match top.sub("vision_cfg") {
            Some(vc) => {
                let p = format!("{prefix}vision_cfg.");
                let k = Keys::new(vc, &p)?;
                for key in ["timm_model_name", "attentional_pool", "ls_init_value", "output_tokens", "act_kwargs"] {
                    k.unsupported(key, |v| v == &Value::Bool(false))?;
                }
                for key in ["global_average_pool", "final_ln_after_pool", "no_ln_pre"] {
                    k.unsupported(key, |v| v == &Value::Bool(false))?;
                }
                k.unsupported("pool_type", |v| v == "tok")?;
                let width = k.usize("width", 768)?;
                let layers = match k.sub("layers") {
                    Some(Value::Number(_)) | None => k.usize("layers", 12)?,
                    Some(other) => return Err(format!("{p}layers = {other}: only a ViT (an integer) is implemented")),
                };
                Some(VisionConfig {
                    stack: StackConfig {
                        width,
                        layers,
                        heads: width / k.usize("head_width", 64)?,
                        mlp: (width as f64 * k.f64("mlp_ratio", 4.0)?) as usize,
                        eps: 1e-5,
                        quick_gelu,
                    },
                    image_size: k.usize("image_size", 224)?,
                    patch_size: k.usize("patch_size", 16)?,
                    patch_bias: false,
                    ln_pre: true,
                    proj: Some(embed),
                })
            }
            None => None,
        };
        let text = match top.sub("text_cfg") {
            Some(tc) => {
                let p = format!("{prefix}text_cfg.");
                let k = Keys::new(tc, &p)?;
                for key in ["hf_model_name", "ls_init_value", "embed_cls", "no_causal_mask", "act_kwargs"] {
                    k.unsupported(key, |v| v == &Value::Bool(false))?;
                }
                k.unsupported("pool_type", |v| v == "argmax")?;
                k.unsupported("proj_type", |v| v == "linear")?;
                let width = k.usize("width", 512)?;
                Some(TextConfig {
                    stack: StackConfig {
                        width,
                        layers: k.usize("layers", 12)?,
                        heads: k.usize("heads", 8)?,
                        mlp: (width as f64 * k.f64("mlp_ratio", 4.0)?) as usize,
                        eps: 1e-5,
                        quick_gelu,
                    },
                    vocab: k.usize("vocab_size", 49408)?,
                    context: k.usize("context_length", 77)?,
                    proj: Some(embed),
                    eos: None,
                })
            }
            None => None,
        };
        Ok(Self { layout: Layout::OpenClip, vision, text, labels: vec![] })
    }

    fn check(&self) -> Result<(), String> {
        for (what, s) in
            [("vision", self.vision.as_ref().map(|v| &v.stack)), ("text", self.text.as_ref().map(|t| &t.stack))]
        {
            if let Some(s) = s {
                if s.heads == 0 || s.width % s.heads != 0 {
                    return Err(format!("{what} tower: width {} is not a multiple of {} heads", s.width, s.heads));
                }
            }
        }
        if let Some(v) = &self.vision {
            if v.image_size % v.patch_size != 0 {
                return Err(format!("image_size {} is not a multiple of patch_size {}", v.image_size, v.patch_size));
            }
        }
        Ok(())
    }
}

fn hf_stack(k: &Keys, width: usize, layers: usize, heads: usize, mlp: usize) -> Result<StackConfig, String> {
    Ok(StackConfig {
        width: k.usize("hidden_size", width)?,
        layers: k.usize("num_hidden_layers", layers)?,
        heads: k.usize("num_attention_heads", heads)?,
        mlp: k.usize("intermediate_size", mlp)?,
        eps: k.f64("layer_norm_eps", 1e-5)?,
        quick_gelu: activation(k.str("hidden_act", "quick_gelu")?, &format!("{}hidden_act", k.prefix))?,
    })
}

/// transformers' `CLIPVisionConfig` (defaults: ViT-B/32).
fn hf_vision(k: &Keys, proj: usize) -> Result<VisionConfig, String> {
    Ok(VisionConfig {
        stack: hf_stack(k, 768, 12, 12, 3072)?,
        image_size: k.usize("image_size", 224)?,
        patch_size: k.usize("patch_size", 32)?,
        patch_bias: false,
        ln_pre: true,
        proj: Some(proj),
    })
}

/// transformers' `CLIPTextConfig`; `eos_token_id = 2` is the legacy marker for "pool at the
/// largest id".
fn hf_text(k: &Keys, proj: usize) -> Result<TextConfig, String> {
    let eos = k.usize("eos_token_id", 49407)?;
    Ok(TextConfig {
        stack: hf_stack(k, 512, 12, 8, 2048)?,
        vocab: k.usize("vocab_size", 49408)?,
        context: k.usize("max_position_embeddings", 77)?,
        proj: Some(proj),
        eos: (eos != 2).then_some(eos),
    })
}
