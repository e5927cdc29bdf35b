//! `SanaTransformer2DModel` sizes from diffusers' `transformer/config.json`; a key the file
//! leaves out takes diffusers' default, and a feature this port does not implement is refused
//! naming its key.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct TransformerConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub cross_heads: usize,
    pub cross_head_dim: usize,
    pub caption_channels: usize,
    pub mlp_ratio: f64,
    /// Bias on the self-attention's q/k/v projections.
    pub attention_bias: bool,
    pub patch_size: usize,
    pub norm_eps: f64,
    /// Timestep and guidance embeddings summed (SANA-Sprint); else the timestep alone.
    pub guidance_embeds: bool,
    pub guidance_embeds_scale: f64,
    /// RMS norm of q and k across all heads (`qk_norm = "rms_norm_across_heads"`).
    pub qk_norm: bool,
    pub sample_size: usize,
}

impl TransformerConfig {
    /// The width of the token stream.
    pub fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The GLUMBConv hidden width (`int(mlp_ratio · dim)`).
    pub fn ff_hidden(&self) -> usize {
        (self.mlp_ratio * self.dim() as f64) as usize
    }

    pub fn parse(json: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let o = v.as_object().ok_or("not a JSON object")?;
        let get = |k: &str| o.get(k).filter(|v| !v.is_null());
        let uint = |k: &str, d: usize| -> Result<usize, String> {
            get(k).map_or(Ok(d), |v| {
                v.as_u64().filter(|&n| n > 0).map(|n| n as usize).ok_or(format!("{k} = {v} is not a positive integer"))
            })
        };
        let num = |k: &str, d: f64| -> Result<f64, String> {
            get(k).map_or(Ok(d), |v| v.as_f64().filter(|x| x.is_finite()).ok_or(format!("{k} = {v} is not a number")))
        };
        let flag = |k: &str, d: bool| -> Result<bool, String> {
            get(k).map_or(Ok(d), |v| v.as_bool().ok_or(format!("{k} = {v} is not true or false")))
        };
        if let Some(c) = get("_class_name").and_then(Value::as_str) {
            if c != "SanaTransformer2DModel" {
                return Err(format!("_class_name = {c:?}: expected \"SanaTransformer2DModel\""));
            }
        }
        if let Some(v) = get("interpolation_scale") {
            return Err(format!(
                "interpolation_scale = {v}: the sin-cos positional embedding is not implemented (SANA-Sprint has none)"
            ));
        }
        if flag("norm_elementwise_affine", false)? {
            return Err("norm_elementwise_affine = true is not implemented".into());
        }
        let qk_norm = match get("qk_norm") {
            None => false,
            Some(Value::String(s)) if s == "rms_norm_across_heads" => true,
            Some(v) => return Err(format!("qk_norm = {v}: only \"rms_norm_across_heads\" or null is implemented")),
        };
        let in_channels = uint("in_channels", 32)?;
        let heads = uint("num_attention_heads", 70)?;
        let head_dim = uint("attention_head_dim", 32)?;
        let cfg = Self {
            in_channels,
            out_channels: uint("out_channels", in_channels)?,
            heads,
            head_dim,
            layers: uint("num_layers", 20)?,
            cross_heads: uint("num_cross_attention_heads", 20)?,
            cross_head_dim: uint("cross_attention_head_dim", 112)?,
            caption_channels: uint("caption_channels", 2304)?,
            mlp_ratio: num("mlp_ratio", 2.5)?,
            attention_bias: flag("attention_bias", false)?,
            patch_size: uint("patch_size", 1)?,
            norm_eps: num("norm_eps", 1e-6)?,
            guidance_embeds: flag("guidance_embeds", false)?,
            guidance_embeds_scale: num("guidance_embeds_scale", 0.1)?,
            qk_norm,
            sample_size: uint("sample_size", 32)?,
        };
        let cross = uint("cross_attention_dim", 2240)?;
        if cross != cfg.dim() || cfg.cross_heads * cfg.cross_head_dim != cfg.dim() {
            return Err(format!(
                "cross_attention_dim {cross} and {} cross heads × {} must both equal the width {} heads × {}",
                cfg.cross_heads, cfg.cross_head_dim, heads, head_dim
            ));
        }
        Ok(cfg)
    }
}
