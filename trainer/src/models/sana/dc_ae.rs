//! The DC-AE decoder (diffusers' `AutoencoderDC.decoder`, SANA's f32c32 autoencoder): a 3×3
//! input convolution with a channel-repeating shortcut, up stages from the deepest level (an
//! upsampling block, then ResBlocks or EfficientViT blocks with multi-scale ReLU linear
//! attention), an RMS norm with bias over channels, ReLU, a 3×3 output convolution. Every size
//! comes from the model's `vae/config.json`; the encoder's tensors in the file are left out.

use super::transformer::GluMbConv;
use crate::activation::silu;
use crate::weights::NameMap;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde_json::Value;

/// The decoder's sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub in_channels: usize,
    pub latent_channels: usize,
    pub head_dim: usize,
    /// Per level, shallowest first: block kind, width, blocks, multi-scale kernel sizes, SiLU
    /// (else ReLU) in ResBlocks.
    pub levels: Vec<Level>,
    /// Upsample by nearest interpolation then a conv (else a conv then pixel shuffle).
    pub interpolate: bool,
    pub in_shortcut: bool,
    pub scaling_factor: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    pub vit: bool,
    pub width: usize,
    pub blocks: usize,
    pub scales: Vec<usize>,
    pub silu: bool,
}

/// A per-level config value: one for all levels, or a list.
fn per_level<'a>(v: Option<&'a Value>, n: usize, key: &str) -> Result<Vec<&'a Value>, String> {
    match v {
        None => Err(format!("{key} is missing")),
        Some(Value::Array(a)) if a.len() == n => Ok(a.iter().collect()),
        Some(Value::Array(a)) => Err(format!("{key} has {} entries for {n} levels", a.len())),
        Some(one) => Ok(vec![one; n]),
    }
}

impl DecoderConfig {
    pub fn parse(json: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        if let Some(c) = get("_class_name").and_then(Value::as_str) {
            if c != "AutoencoderDC" {
                return Err(format!("_class_name = {c:?}: expected \"AutoencoderDC\""));
            }
        }
        let uint = |k: &str, d: usize| -> Result<usize, String> {
            get(k).map_or(Ok(d), |x| {
                x.as_u64().filter(|&n| n > 0).map(|n| n as usize).ok_or(format!("{k} = {x} is not a positive integer"))
            })
        };
        let widths: Vec<usize> = match get("decoder_block_out_channels") {
            Some(Value::Array(a)) => a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect::<Option<_>>(),
            _ => None,
        }
        .filter(|w: &Vec<usize>| !w.is_empty())
        .ok_or("decoder_block_out_channels must be a list of widths")?;
        let n = widths.len();
        let kinds = per_level(get("decoder_block_types"), n, "decoder_block_types")?;
        let layers = per_level(get("decoder_layers_per_block"), n, "decoder_layers_per_block")?;
        let scales = per_level(get("decoder_qkv_multiscales"), n, "decoder_qkv_multiscales")?;
        let (rms, silu_name) = (Value::from("rms_norm"), Value::from("silu"));
        let norms = per_level(get("decoder_norm_types").or(Some(&rms)), n, "decoder_norm_types")?;
        let acts = per_level(get("decoder_act_fns").or(Some(&silu_name)), n, "decoder_act_fns")?;
        let mut levels = Vec::with_capacity(n);
        for i in 0..n {
            let vit = match kinds[i].as_str() {
                Some("ResBlock") => false,
                Some("EfficientViTBlock") => true,
                _ => {
                    return Err(format!(
                        "decoder_block_types[{i}] = {}: expected ResBlock or EfficientViTBlock",
                        kinds[i]
                    ))
                }
            };
            if norms[i].as_str() != Some("rms_norm") {
                return Err(format!("decoder_norm_types[{i}] = {}: only \"rms_norm\" is implemented", norms[i]));
            }
            let silu = match acts[i].as_str() {
                Some("silu") => true,
                Some("relu") => false,
                _ => {
                    return Err(format!(
                        "decoder_act_fns[{i}] = {}: only \"silu\" and \"relu\" are implemented",
                        acts[i]
                    ))
                }
            };
            let blocks = layers[i].as_u64().ok_or(format!("decoder_layers_per_block[{i}] is not a count"))? as usize;
            if i == 0 && blocks == 0 {
                return Err("decoder_layers_per_block[0] = 0 (an upsampling output) is not implemented".into());
            }
            let sc = scales[i]
                .as_array()
                .map(|a| a.iter().filter_map(|k| k.as_u64().map(|k| k as usize)).collect())
                .ok_or(format!("decoder_qkv_multiscales[{i}] is not a list of kernel sizes"))?;
            levels.push(Level { vit, width: widths[i], blocks, scales: sc, silu });
        }
        let interpolate = match get("upsample_block_type").and_then(Value::as_str).unwrap_or("pixel_shuffle") {
            "interpolate" => true,
            "pixel_shuffle" => false,
            other => return Err(format!("upsample_block_type = {other:?}: expected interpolate or pixel_shuffle")),
        };
        if get("decoder_conv_act_fn").and_then(Value::as_str).unwrap_or("relu") != "relu" {
            return Err("decoder_conv_act_fn: only \"relu\" is implemented".into());
        }
        Ok(Self {
            in_channels: uint("in_channels", 3)?,
            latent_channels: uint("latent_channels", 32)?,
            head_dim: uint("attention_head_dim", 32)?,
            levels,
            interpolate,
            in_shortcut: get("decoder_in_shortcut").and_then(Value::as_bool).unwrap_or(true),
            scaling_factor: get("scaling_factor").and_then(Value::as_f64).unwrap_or(1.0),
        })
    }
}

/// RMS norm over channels with weight and bias (diffusers' `RMSNorm(…, bias=True)`).
#[derive(Module, Debug)]
pub struct RmsNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
}

impl RmsNorm2d {
    fn new(c: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
        }
    }

    /// `[b, C, H, W]`, normalised over C.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let c = x.dims()[1];
        let rms = x.clone().powf_scalar(2.0).mean_dim(1).add_scalar(1e-5).sqrt();
        x / rms * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

fn conv3(i: usize, o: usize, bias: bool, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).with_bias(bias).init(device)
}

/// Each channel repeated `r` times in place (`repeat_interleave(r, dim=1)`).
fn repeat_channels(x: Tensor<4>, r: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, 1, h, w]).expand([b, c, r, h, w]).reshape([b, c * r, h, w])
}

/// `[b, 4C, H, W]` → `[b, C, 2H, 2W]` (`pixel_shuffle(·, 2)`).
fn pixel_shuffle(x: Tensor<4>) -> Tensor<4> {
    let [b, c4, h, w] = x.dims();
    let c = c4 / 4;
    x.reshape([b, c, 2, 2, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([b, c, 2 * h, 2 * w])
}

/// Nearest-neighbour ×2.
fn nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub conv: Conv2d,
    pub interpolate: bool,
    pub repeats: usize,
}

impl UpBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = if self.interpolate {
            self.conv.forward(nearest2(x.clone()))
        } else {
            pixel_shuffle(self.conv.forward(x.clone()))
        };
        y + pixel_shuffle(repeat_channels(x, self.repeats))
    }
}

#[derive(Module, Debug)]
pub struct ResBlock {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub norm: RmsNorm2d,
    pub silu: bool,
}

impl ResBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(x.clone());
        let h = if self.silu { silu(h) } else { relu(h) };
        x + self.norm.forward(self.conv2.forward(h))
    }
}

/// One multi-scale branch: a depth-wise k×k conv, then a 1×1 conv grouped by head.
#[derive(Module, Debug)]
pub struct Multiscale {
    pub proj_in: Conv2d,
    pub proj_out: Conv2d,
}

/// Lightweight multi-scale ReLU linear attention (diffusers' `SanaMultiscaleLinearAttention`).
#[derive(Module, Debug)]
pub struct LiteMla {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_qkv_multiscale: Vec<Multiscale>,
    pub to_out: Linear,
    pub norm_out: RmsNorm2d,
    pub head_dim: usize,
}

/// `[b, C, H, W]` through a linear layer over C.
fn channels_linear(l: &Linear, x: Tensor<4>) -> Tensor<4> {
    l.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

impl LiteMla {
    fn new(c: usize, head_dim: usize, scales: &[usize], device: &Device) -> Self {
        let heads = c / head_dim;
        let inner = heads * head_dim;
        let lin = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            to_q: lin(c, inner),
            to_k: lin(c, inner),
            to_v: lin(c, inner),
            to_qkv_multiscale: scales
                .iter()
                .map(|&k| Multiscale {
                    proj_in: Conv2dConfig::new([3 * inner, 3 * inner], [k, k])
                        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                        .with_groups(3 * inner)
                        .with_bias(false)
                        .init(device),
                    proj_out: Conv2dConfig::new([3 * inner, 3 * inner], [1, 1])
                        .with_groups(3 * heads)
                        .with_bias(false)
                        .init(device),
                })
                .collect(),
            to_out: lin(inner * (1 + scales.len()), c),
            norm_out: RmsNorm2d::new(c, device),
            head_dim,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let n = h * w;
        let d = self.head_dim;
        let qkv = Tensor::cat(
            vec![
                channels_linear(&self.to_q, x.clone()),
                channels_linear(&self.to_k, x.clone()),
                channels_linear(&self.to_v, x.clone()),
            ],
            1,
        );
        let mut all = vec![qkv.clone()];
        for m in &self.to_qkv_multiscale {
            all.push(m.proj_out.forward(m.proj_in.forward(qkv.clone())));
        }
        let all = Tensor::cat(all, 1);
        let groups = all.dims()[1] / (3 * d);
        let all = all.reshape([b, groups, 3 * d, n]);
        let q = relu(all.clone().narrow(2, 0, d));
        let k = relu(all.clone().narrow(2, d, d));
        let v = all.narrow(2, 2 * d, d);
        let out = if n > d {
            // Linear: (V⁺ Kᵀ) Q with V⁺ = V plus a row of ones, divided by that row + 1e-15.
            let ones = Tensor::<4>::ones([b, groups, 1, n], &v.device());
            let hs = Tensor::cat(vec![v, ones], 2).matmul(k.swap_dims(2, 3)).matmul(q);
            hs.clone().narrow(2, 0, d) / hs.narrow(2, d, 1).add_scalar(1e-15)
        } else {
            // Quadratic (few positions): V (KᵀQ / column sums).
            let s = k.swap_dims(2, 3).matmul(q);
            let s = s.clone() / s.sum_dim(2).add_scalar(1e-15);
            v.matmul(s)
        };
        let out = out.reshape([b, groups * d, h, w]);
        x + self.norm_out.forward(channels_linear(&self.to_out, out))
    }
}

/// GLUMBConv with an RMS norm and a residual (the EfficientViT block's `conv_out`).
#[derive(Module, Debug)]
pub struct NormedMbConv {
    pub conv: GluMbConv,
    pub norm: RmsNorm2d,
}

#[derive(Module, Debug)]
pub struct VitBlock {
    pub attn: LiteMla,
    pub conv_out: NormedMbConv,
}

impl VitBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.attn.forward(x);
        x.clone() + self.conv_out.norm.forward(self.conv_out.conv.forward(x))
    }
}

/// A level's block: a ResBlock or an EfficientViT block.
#[derive(Module, Debug)]
pub struct DcBlock {
    pub res: Option<ResBlock>,
    pub vit: Option<VitBlock>,
}

#[derive(Module, Debug)]
pub struct Stage {
    pub upsample: Option<UpBlock>,
    pub blocks: Vec<DcBlock>,
}

#[derive(Module, Debug)]
pub struct DcDecoder {
    pub conv_in: Conv2d,
    pub up_blocks: Vec<Stage>,
    pub norm_out: RmsNorm2d,
    pub conv_out: Conv2d,
    pub in_repeats: usize,
}

impl DcDecoder {
    pub fn new(c: &DecoderConfig, device: &Device) -> Self {
        let n = c.levels.len();
        let deepest = c.levels[n - 1].width;
        let up_blocks = (0..n)
            .map(|i| {
                let l = &c.levels[i];
                let upsample = (i < n - 1 && l.blocks > 0).then(|| {
                    let from = c.levels[i + 1].width;
                    let out = if c.interpolate { l.width } else { 4 * l.width };
                    UpBlock {
                        conv: conv3(from, out, true, device),
                        interpolate: c.interpolate,
                        repeats: l.width * 4 / from,
                    }
                });
                let blocks = (0..l.blocks)
                    .map(|_| match l.vit {
                        false => DcBlock {
                            res: Some(ResBlock {
                                conv1: conv3(l.width, l.width, true, device),
                                conv2: conv3(l.width, l.width, false, device),
                                norm: RmsNorm2d::new(l.width, device),
                                silu: l.silu,
                            }),
                            vit: None,
                        },
                        true => DcBlock {
                            res: None,
                            vit: Some(VitBlock {
                                attn: LiteMla::new(l.width, c.head_dim, &l.scales, device),
                                conv_out: NormedMbConv {
                                    conv: GluMbConv::new(l.width, 4 * l.width, device),
                                    norm: RmsNorm2d::new(l.width, device),
                                },
                            }),
                        },
                    })
                    .collect();
                Stage { upsample, blocks }
            })
            .collect();
        let first = c.levels[0].width;
        Self {
            conv_in: conv3(c.latent_channels, deepest, true, device),
            up_blocks,
            norm_out: RmsNorm2d::new(first, device),
            conv_out: conv3(first, c.in_channels, true, device),
            in_repeats: if c.in_shortcut { deepest / c.latent_channels } else { 0 },
        }
    }

    /// Latents (already divided by `scaling_factor`) `[b, latent, h, w]` → images `[b, 3, H, W]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        self.links().iter().fold(z, |x, link| link(x))
    }

    /// The decoder as a chain of links — the input convolution, each upsampling and block, the
    /// output — whose composition is [`DcDecoder::forward`]: what gradient checkpointing
    /// recomputes one at a time.
    pub fn links(&self) -> Vec<Box<dyn Fn(Tensor<4>) -> Tensor<4> + '_>> {
        let mut links: Vec<Box<dyn Fn(Tensor<4>) -> Tensor<4> + '_>> = vec![Box::new(move |z: Tensor<4>| {
            let x = self.conv_in.forward(z.clone());
            if self.in_repeats > 0 {
                x + repeat_channels(z, self.in_repeats)
            } else {
                x
            }
        })];
        for stage in self.up_blocks.iter().rev() {
            if let Some(u) = &stage.upsample {
                links.push(Box::new(move |x| u.forward(x)));
            }
            for b in &stage.blocks {
                links.push(Box::new(move |x| match (&b.res, &b.vit) {
                    (Some(r), _) => r.forward(x),
                    (_, Some(v)) => v.forward(x),
                    _ => unreachable!("a block is one kind"),
                }));
            }
        }
        links.push(Box::new(move |x| self.conv_out.forward(relu(self.norm_out.forward(x)))));
        links
    }
}

/// diffusers' names onto [`DcDecoder`]'s: the per-level `Sequential` indices become the
/// upsampling block and the numbered blocks; the encoder is left out.
pub fn decoder_names(c: &DecoderConfig) -> NameMap {
    let mut m = NameMap::default().pytorch_layout().ignore(r"encoder\..*");
    let n = c.levels.len();
    for (i, l) in c.levels.iter().enumerate() {
        let offset = usize::from(i < n - 1 && l.blocks > 0);
        if offset == 1 {
            m = m.rename(format!(r"^decoder\.up_blocks\.{i}\.0\."), format!("decoder.up_blocks.{i}.upsample."));
        }
        let kind = if l.vit { "vit" } else { "res" };
        for j in 0..l.blocks {
            m = m.rename(
                format!(r"^decoder\.up_blocks\.{i}\.{}\.", j + offset),
                format!("decoder.up_blocks.{i}.blocks.{j}.{kind}."),
            );
        }
    }
    m.rename(r"\.conv_out\.conv_(inverted|depth|point)\.", ".conv_out.conv.conv_$1.")
}

/// The decoder under the name the file uses (`decoder.`).
#[derive(Module, Debug)]
pub struct DcAe {
    pub decoder: DcDecoder,
}
