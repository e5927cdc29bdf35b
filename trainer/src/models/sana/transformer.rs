//! diffusers' `SanaTransformer2DModel`, as SANA-Sprint runs it: patch embedding, timestep (and
//! guidance) embedding to adaLN-single modulation, caption projection and RMS norm, blocks of
//! ReLU linear self-attention (computed in float32), softmax cross-attention to the masked prompt
//! tokens and the GLUMBConv Mix-FFN, then the modulated output norm, `proj_out` and unpatchify.
//! Field names follow diffusers' so the name map is short; every size comes from
//! [`TransformerConfig`].
//!
//! Float32 throughout, or with [`SanaTransformer::into_bf16`] as the reference trains it (bf16
//! autocast, spec §11.1): the weights of the linear layers and 1×1 convolutions — all but a
//! fraction of a percent of the parameters — are held in bfloat16 and every product with them
//! takes bf16 inputs; norms, both attentions, softmax and the residual stream stay float32 (where
//! autocast would also run the attention products in bf16: this is the more accurate side).

use super::config::TransformerConfig;
use crate::activation::silu;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{gelu_approximate, relu, softmax};
use burn::tensor::{Device, FloatDType, Tensor};

/// Where the products with the weights run: float32, or bf16 in and float32 out.
#[derive(Clone, Copy, Debug)]
struct Mm {
    bf16: bool,
}

impl Mm {
    fn cast<const D: usize>(self, t: Tensor<D>) -> Tensor<D> {
        if self.bf16 {
            t.cast(FloatDType::BF16)
        } else {
            t
        }
    }

    fn widen<const D: usize>(self, t: Tensor<D>) -> Tensor<D> {
        if self.bf16 {
            t.cast(FloatDType::F32)
        } else {
            t
        }
    }

    /// `l(x)`; in bf16 the input, weight and bias are cast as autocast casts them. The weight's
    /// cast is free for a bf16 base and rounds an adapted one (`base + ΔW`, float32 as its
    /// factors are) once per call.
    fn linear<const D: usize>(self, l: &Linear, x: Tensor<D>) -> Tensor<D> {
        if !self.bf16 {
            return l.forward(x);
        }
        let bias = l.bias.as_ref().map(|b| self.cast(b.val()));
        self.widen(burn::tensor::module::linear(self.cast(x), self.cast(l.weight.val()), bias))
    }

    fn matmul(self, a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
        self.widen(self.cast(a).matmul(self.cast(b)))
    }
}

/// `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct Mlp2 {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl Mlp2 {
    fn new(i: usize, h: usize, device: &Device) -> Self {
        Self { linear_1: LinearConfig::new(i, h).init(device), linear_2: LinearConfig::new(h, h).init(device) }
    }
}

/// Sinusoidal timestep features (diffusers' `Timesteps(256, flip_sin_to_cos=True,
/// downscale_freq_shift=0)`): `[cos(t·f_k), sin(t·f_k)]`, `f_k = 10000^(−k/128)`.
pub fn timestep_features(t: &[f32], device: &Device) -> Tensor<2> {
    let half = 128;
    let mut v = Vec::with_capacity(t.len() * 2 * half);
    for &ti in t {
        let args: Vec<f32> = (0..half).map(|k| ti * (-(10000f32.ln()) * k as f32 / half as f32).exp()).collect();
        v.extend(args.iter().map(|a| a.cos()));
        v.extend(args.iter().map(|a| a.sin()));
    }
    crate::tensors::matrix(v, t.len(), 2 * half, device)
}

#[derive(Module, Debug)]
pub struct TimeEmbed {
    pub timestep_embedder: Mlp2,
    pub guidance_embedder: Option<Mlp2>,
    pub linear: Linear,
}

impl TimeEmbed {
    /// `(6·dim modulation, dim embedding)` of timesteps and guidance.
    fn forward(&self, t: &[f32], guidance: Option<&[f32]>, mm: Mm, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let mlp = |m: &Mlp2, x: Tensor<2>| mm.linear(&m.linear_2, silu(mm.linear(&m.linear_1, x)));
        let mut cond = mlp(&self.timestep_embedder, timestep_features(t, device));
        if let (Some(g), Some(emb)) = (guidance, &self.guidance_embedder) {
            cond = cond + mlp(emb, timestep_features(g, device));
        }
        (mm.linear(&self.linear, silu(cond.clone())), cond)
    }
}

/// Attention projections; `to_out` is diffusers' `to_out.0`.
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub norm_q: Option<RmsNorm>,
    pub norm_k: Option<RmsNorm>,
    pub heads: usize,
}

impl Attention {
    fn new(dim: usize, heads: usize, head_dim: usize, bias: bool, qk_norm: bool, device: &Device) -> Self {
        let inner = heads * head_dim;
        let lin = |i, o, b| LinearConfig::new(i, o).with_bias(b).init(device);
        let norm = || qk_norm.then(|| RmsNormConfig::new(inner).with_epsilon(1e-5).init(device));
        Self {
            to_q: lin(dim, inner, bias),
            to_k: lin(dim, inner, bias),
            to_v: lin(dim, inner, bias),
            to_out: lin(inner, dim, true),
            norm_q: norm(),
            norm_k: norm(),
            heads,
        }
    }

    fn qkv(&self, x: Tensor<3>, ctx: Tensor<3>, mm: Mm) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        let mut q = mm.linear(&self.to_q, x);
        let mut k = mm.linear(&self.to_k, ctx.clone());
        let v = mm.linear(&self.to_v, ctx);
        if let Some(n) = &self.norm_q {
            q = n.forward(q);
        }
        if let Some(n) = &self.norm_k {
            k = n.forward(k);
        }
        (q, k, v)
    }

    /// ReLU linear attention (SANA): `out_i = Σ_j (φq_i·φk_j) v_j / Σ_j φq_i·φk_j`, `φ = relu`,
    /// computed as diffusers does: `(V⁺ Kᵀ) Q` with `V⁺` = V plus a row of ones (the
    /// denominator), then the division by that row + 1e-15.
    fn linear(&self, x: Tensor<3>, mm: Mm) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let (q, k, v) = self.qkv(x.clone(), x, mm);
        let inner = q.dims()[2];
        let d = inner / self.heads;
        // [b, n, inner] → [b, h, d, n]
        let split = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b, self.heads, d, n]);
        let (q, k, v) = (relu(split(q)), relu(split(k)).swap_dims(2, 3), split(v));
        let ones = Tensor::<4>::ones([b, self.heads, 1, n], &v.device());
        let v = Tensor::cat(vec![v, ones], 2); // [b, h, d+1, n]
        let h = v.matmul(k).matmul(q); // [b, h, d+1, n]
        let num = h.clone().narrow(2, 0, d);
        let den = h.narrow(2, d, 1).add_scalar(1e-15);
        let out = (num / den).reshape([b, inner, n]).swap_dims(1, 2);
        mm.linear(&self.to_out, out)
    }

    /// Softmax cross-attention of `x` to `ctx`; `bias` `[b, 1, 1, m]` is 0 for a prompt token and
    /// −10 000 for padding (diffusers' mask bias).
    fn cross(&self, x: Tensor<3>, ctx: Tensor<3>, bias: &Tensor<4>, mm: Mm) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let m = ctx.dims()[1];
        let (q, k, v) = self.qkv(x, ctx, mm);
        let inner = q.dims()[2];
        let d = inner / self.heads;
        let heads = |t: Tensor<3>, l: usize| t.reshape([b, l, self.heads, d]).swap_dims(1, 2);
        let (q, k, v) = (heads(q, n), heads(k, m), heads(v, m));
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (d as f64).sqrt()) + bias.clone();
        let out = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, n, inner]);
        mm.linear(&self.to_out, out)
    }
}

/// The Mix-FFN: 1×1 conv to 2×hidden, SiLU, 3×3 depth-wise conv, gated by the SiLU of its second
/// half, 1×1 conv back.
#[derive(Module, Debug)]
pub struct GluMbConv {
    pub conv_inverted: Conv2d,
    pub conv_depth: Conv2d,
    pub conv_point: Conv2d,
}

impl GluMbConv {
    pub(super) fn new(dim: usize, hidden: usize, device: &Device) -> Self {
        Self {
            conv_inverted: Conv2dConfig::new([dim, 2 * hidden], [1, 1]).init(device),
            conv_depth: Conv2dConfig::new([2 * hidden, 2 * hidden], [3, 3])
                .with_groups(2 * hidden)
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            conv_point: Conv2dConfig::new([hidden, dim], [1, 1]).with_bias(false).init(device),
        }
    }

    pub(super) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv_depth.forward(silu(self.conv_inverted.forward(x)));
        let c = h.dims()[1] / 2;
        let gated = h.clone().narrow(1, 0, c) * silu(h.narrow(1, c, c));
        self.conv_point.forward(gated)
    }

    /// The same on tokens `[b, h·w, dim]` (the transformer's layout), channels last: the 1×1
    /// convolutions as matmuls and the depth-wise 3×3 one as nine shifted products — the same
    /// sums as [`GluMbConv::forward`] without moving the tokens to NCHW and back.
    fn forward_tokens(&self, x: Tensor<3>, hw: [usize; 2], mm: Mm) -> Tensor<3> {
        let [b, n, dim] = x.dims();
        let [h, w] = hw;
        let w_in = self.conv_inverted.weight.val();
        let c2 = w_in.dims()[0];
        let mut y = mm.matmul(x.reshape([b * n, dim]), w_in.reshape([c2, dim]).transpose());
        if let Some(bias) = &self.conv_inverted.bias {
            y = y + bias.val().unsqueeze::<2>();
        }
        let y = silu(y).reshape([b, h, w, c2]);
        // Zero padding of one pixel on each side of the spatial axes.
        let device = y.device();
        let zr = Tensor::<4>::zeros([b, 1, w, c2], &device);
        let y = Tensor::cat(vec![zr.clone(), y, zr], 1);
        let zc = Tensor::<4>::zeros([b, h + 2, 1, c2], &device);
        let y = Tensor::cat(vec![zc.clone(), y, zc], 2);
        let taps = self.conv_depth.weight.val().reshape([c2, 9]).transpose(); // [9, c2]
        let mut d = Tensor::<4>::zeros([b, h, w, c2], &device);
        for t in 0..9 {
            let (dy, dx) = (t / 3, t % 3);
            let k = taps.clone().narrow(0, t, 1).reshape([1, 1, 1, c2]);
            d = d + y.clone().slice([0..b, dy..dy + h, dx..dx + w, 0..c2]) * k;
        }
        if let Some(bias) = &self.conv_depth.bias {
            d = d + bias.val().reshape([1, 1, 1, c2]);
        }
        let c = c2 / 2;
        let gated = d.clone().narrow(3, 0, c) * silu(d.narrow(3, c, c));
        let w_pt = self.conv_point.weight.val();
        let out = mm.matmul(gated.reshape([b * n, c]), w_pt.reshape([dim, c]).transpose());
        out.reshape([b, n, dim])
    }
}

/// LayerNorm without affine parameters over the last axis.
fn layer_norm(x: Tensor<3>, eps: f64) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().powf_scalar(2.0).mean_dim(2);
    centred / var.add_scalar(eps).sqrt()
}

#[derive(Module, Debug)]
pub struct Block {
    pub attn1: Attention,
    pub attn2: Attention,
    pub ff: GluMbConv,
    pub scale_shift_table: Param<Tensor<2>>,
    pub eps: f64,
}

impl Block {
    fn new(c: &TransformerConfig, device: &Device) -> Self {
        let dim = c.dim();
        Self {
            attn1: Attention::new(dim, c.heads, c.head_dim, c.attention_bias, c.qk_norm, device),
            attn2: Attention::new(dim, c.cross_heads, c.cross_head_dim, true, c.qk_norm, device),
            ff: GluMbConv::new(dim, c.ff_hidden(), device),
            scale_shift_table: Param::from_tensor(Tensor::zeros([6, dim], device)),
            eps: c.norm_eps,
        }
    }

    /// `x` `[b, h·w, dim]`; `modulation` `[b, 6·dim]`.
    fn forward(
        &self,
        x: Tensor<3>,
        ctx: Tensor<3>,
        bias: &Tensor<4>,
        modulation: &Tensor<2>,
        hw: [usize; 2],
        mm: Mm,
    ) -> Tensor<3> {
        let [b, _, dim] = x.dims();
        let m = self.scale_shift_table.val().unsqueeze::<3>() + modulation.clone().reshape([b, 6, dim]);
        let part = |i: usize| m.clone().narrow(1, i, 1); // [b, 1, dim]
        let (shift_msa, scale_msa, gate_msa) = (part(0), part(1), part(2));
        let (shift_mlp, scale_mlp, gate_mlp) = (part(3), part(4), part(5));
        let y = layer_norm(x.clone(), self.eps) * scale_msa.add_scalar(1.0) + shift_msa;
        let x = x + gate_msa * self.attn1.linear(y, mm);
        let x = x.clone() + self.attn2.cross(x, ctx, bias, mm);
        let y = layer_norm(x.clone(), self.eps) * scale_mlp.add_scalar(1.0) + shift_mlp;
        x + gate_mlp * self.ff.forward_tokens(y, hw, mm)
    }
}

/// `linear_2(gelu_tanh(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct CaptionProjection {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

#[derive(Module, Debug)]
pub struct SanaTransformer {
    pub patch_embed: PatchEmbed,
    pub time_embed: TimeEmbed,
    pub caption_projection: CaptionProjection,
    pub caption_norm: RmsNorm,
    pub transformer_blocks: Vec<Block>,
    pub scale_shift_table: Param<Tensor<2>>,
    pub proj_out: Linear,
    pub patch_size: usize,
    pub out_channels: usize,
    /// The products with the weights in bf16 ([`SanaTransformer::into_bf16`]).
    pub bf16: bool,
}

/// One forward's conditioning: the prompt tokens, their mask, the (TrigFlow-derived) timestep and
/// the guidance (already multiplied by `guidance_embeds_scale`), one per sample.
pub struct Conditioning<'a> {
    /// `[b, L, caption_channels]`.
    pub ctx: Tensor<3>,
    /// `[b, L]`: 1 for a token, 0 for padding.
    pub mask: Tensor<2>,
    pub timestep: &'a [f32],
    pub guidance: Option<&'a [f32]>,
}

impl SanaTransformer {
    pub fn new(c: &TransformerConfig, device: &Device) -> Self {
        let dim = c.dim();
        let p = c.patch_size;
        Self {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([c.in_channels, dim], [p, p]).with_stride([p, p]).init(device),
            },
            time_embed: TimeEmbed {
                timestep_embedder: Mlp2::new(256, dim, device),
                guidance_embedder: c.guidance_embeds.then(|| Mlp2::new(256, dim, device)),
                linear: LinearConfig::new(dim, 6 * dim).init(device),
            },
            caption_projection: CaptionProjection {
                linear_1: LinearConfig::new(c.caption_channels, dim).init(device),
                linear_2: LinearConfig::new(dim, dim).init(device),
            },
            caption_norm: RmsNormConfig::new(dim).with_epsilon(1e-5).init(device),
            transformer_blocks: (0..c.layers).map(|_| Block::new(c, device)).collect(),
            scale_shift_table: Param::from_tensor(Tensor::zeros([2, dim], device)),
            proj_out: LinearConfig::new(dim, p * p * c.out_channels).init(device),
            patch_size: p,
            out_channels: c.out_channels,
            bf16: false,
        }
    }

    /// The model as the reference trains it (bf16 autocast, spec §11.1): the weights of the
    /// linear layers and 1×1 convolutions held in bfloat16 (half the memory) and every product
    /// with them in bf16; the rest float32. Adapters attached afterwards keep float32 factors.
    pub fn into_bf16(self) -> Self {
        struct Cast(Vec<String>);
        impl burn::module::ModuleMapper for Cast {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.0.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.pop();
            }
            fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
                // Exactly the weights `Mm` multiplies with: linear weights (2-D `weight`) and the
                // Mix-FFN's two pointwise kernels; not the patch embedding or depth-wise taps.
                let path = self.0.join(".");
                let product = path.ends_with(".weight")
                    && (D == 2 || path.ends_with("conv_inverted.weight") || path.ends_with("conv_point.weight"));
                if product {
                    p.map(|t| t.cast(FloatDType::BF16))
                } else {
                    p
                }
            }
        }
        let mut model = self.map(&mut Cast(Vec::new()));
        model.bf16 = true;
        model
    }

    /// The model output for latents `x` `[b, C, H, W]` (diffusers' `.sample`).
    pub fn forward(&self, x: Tensor<4>, cond: &Conditioning) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let device = x.device();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let x = self.patch_embed.proj.forward(x);
        let dim = x.dims()[1];
        let mut x = x.reshape([b, dim, gh * gw]).swap_dims(1, 2);
        let mm = Mm { bf16: self.bf16 };
        let (modulation, embedded) = self.time_embed.forward(cond.timestep, cond.guidance, mm, &device);
        let c = &self.caption_projection;
        let ctx = mm.linear(&c.linear_2, gelu_approximate(mm.linear(&c.linear_1, cond.ctx.clone())));
        let ctx = self.caption_norm.forward(ctx);
        let m = cond.mask.dims()[1];
        let bias = (cond.mask.clone().neg().add_scalar(1.0)).mul_scalar(-10000.0).reshape([b, 1, 1, m]);
        for block in &self.transformer_blocks {
            x = block.forward(x, ctx.clone(), &bias, &modulation, [gh, gw], mm);
        }
        let t = self.scale_shift_table.val().unsqueeze::<3>() + embedded.unsqueeze_dim::<3>(1);
        let (shift, scale) = (t.clone().narrow(1, 0, 1), t.narrow(1, 1, 1));
        let x = layer_norm(x, 1e-6) * scale.add_scalar(1.0) + shift;
        let x = mm.linear(&self.proj_out, x); // [b, gh·gw, p·p·C]
        let c_out = self.out_channels;
        x.reshape([b, gh, gw, p, p, c_out]).permute([0, 5, 1, 3, 2, 4]).reshape([b, c_out, gh * p, gw * p])
    }
}
