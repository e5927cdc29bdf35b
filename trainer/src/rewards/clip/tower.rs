//! The CLIP-family towers: one pre-norm transformer block (`x + attn(ln1(x))`, then
//! `x + mlp(ln2(x))`) shared by the image tower (patches + class token, pooled at the class
//! token after the last norm) and the text tower (tokens, causal attention, pooled at the end
//! token). Names are this module's own; `layouts` maps each published layout onto them.

use super::config::{StackConfig, TextConfig, VisionConfig};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

#[derive(Module, Debug)]
pub struct Block {
    pub ln1: LayerNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub ln2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub heads: usize,
    pub quick_gelu: bool,
}

impl Block {
    fn new(c: &StackConfig, device: &Device) -> Self {
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        let ln = || LayerNormConfig::new(c.width).with_epsilon(c.eps).init(device);
        Self {
            ln1: ln(),
            q: lin(c.width, c.width),
            k: lin(c.width, c.width),
            v: lin(c.width, c.width),
            out: lin(c.width, c.width),
            ln2: ln(),
            fc1: lin(c.width, c.mlp),
            fc2: lin(c.mlp, c.width),
            heads: c.heads,
            quick_gelu: c.quick_gelu,
        }
    }

    /// `[n, L, w]` → `[n, L, w]`; `mask` `[L, L]` is true where attention is not allowed.
    fn forward(&self, x: Tensor<3>, mask: Option<&Tensor<2, Bool>>) -> Tensor<3> {
        let [n, l, w] = x.dims();
        let (h, d) = (self.heads, w / self.heads);
        let heads = |t: Tensor<3>| t.reshape([n, l, h, d]).swap_dims(1, 2);
        let y = self.ln1.forward(x.clone());
        let q = heads(self.q.forward(y.clone())).mul_scalar(1.0 / (d as f64).sqrt());
        let (k, v) = (heads(self.k.forward(y.clone())), heads(self.v.forward(y)));
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if let Some(m) = mask {
            scores = scores.mask_fill(m.clone().unsqueeze::<4>().expand([n, h, l, l]), f32::NEG_INFINITY);
        }
        let att = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([n, l, w]);
        let x = x + self.out.forward(att);
        let m = self.fc1.forward(self.ln2.forward(x.clone()));
        let m = if self.quick_gelu { m.clone() * sigmoid(m.mul_scalar(1.702)) } else { gelu(m) };
        x + self.fc2.forward(m)
    }
}

fn stack(c: &StackConfig, device: &Device) -> Vec<Block> {
    (0..c.layers).map(|_| Block::new(c, device)).collect()
}

fn run(blocks: &[Block], mut x: Tensor<3>, mask: Option<&Tensor<2, Bool>>) -> Tensor<3> {
    for b in blocks {
        x = b.forward(x, mask);
    }
    x
}

/// The image tower: `[n, 3, S, S]` normalised pixels → pooled features `[n, D]`.
#[derive(Module, Debug)]
pub struct VisionTower {
    pub patch: Conv2d,
    pub cls: Param<Tensor<1>>,
    pub pos: Param<Tensor<2>>,
    pub ln_pre: Option<LayerNorm>,
    pub blocks: Vec<Block>,
    pub ln_post: LayerNorm,
    pub proj: Option<Linear>,
    pub patch_size: usize,
}

impl VisionTower {
    pub fn new(c: &VisionConfig, device: &Device) -> Self {
        let w = c.stack.width;
        let p = c.patch_size;
        let tokens = (c.image_size / p).pow(2) + 1;
        let ln = || LayerNormConfig::new(w).with_epsilon(c.stack.eps).init(device);
        Self {
            patch: Conv2dConfig::new([3, w], [p, p]).with_stride([p, p]).with_bias(c.patch_bias).init(device),
            cls: Param::from_tensor(Tensor::zeros([w], device)),
            pos: Param::from_tensor(Tensor::zeros([tokens, w], device)),
            ln_pre: c.ln_pre.then(ln),
            blocks: stack(&c.stack, device),
            ln_post: ln(),
            proj: c.proj.map(|d| LinearConfig::new(w, d).with_bias(false).init(device)),
            patch_size: p,
        }
    }

    /// The image side the tower takes.
    pub fn image_size(&self) -> usize {
        let [tokens, _] = self.pos.dims();
        ((tokens - 1) as f64).sqrt().round() as usize * self.patch_size
    }

    /// Pooled features of normalised pixels `[n, 3, S, S]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let [n, c, s, _] = pixels.dims();
        let p = self.patch_size;
        let g = s / p;
        let w = self.cls.dims()[0];
        // The stride-p, p×p convolution as one matmul over non-overlapping patches.
        let patches = pixels.reshape([n, c, g, p, g, p]).permute([0, 2, 4, 1, 3, 5]).reshape([n * g * g, c * p * p]);
        let kernel = self.patch.weight.val().reshape([w, c * p * p]);
        let mut x = patches.matmul(kernel.transpose());
        if let Some(b) = &self.patch.bias {
            x = x + b.val().unsqueeze::<2>();
        }
        let x = x.reshape([n, g * g, w]);
        let cls = self.cls.val().reshape([1, 1, w]).expand([n, 1, w]);
        let mut x = Tensor::cat(vec![cls, x], 1) + self.pos.val().unsqueeze::<3>();
        if let Some(ln) = &self.ln_pre {
            x = ln.forward(x);
        }
        let x = run(&self.blocks, x, None);
        let pooled = self.ln_post.forward(x.narrow(1, 0, 1).reshape([n, w]));
        match &self.proj {
            Some(p) => p.forward(pooled),
            None => pooled,
        }
    }
}

/// The text tower: token ids `[n, L]` → pooled features `[n, D]`.
#[derive(Module, Debug)]
pub struct TextTower {
    pub token: Embedding,
    pub pos: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    pub ln_final: LayerNorm,
    pub proj: Option<Linear>,
    /// Pool at the first occurrence of this id; 0: at the largest id.
    pub eos: usize,
}

impl TextTower {
    pub fn new(c: &TextConfig, device: &Device) -> Self {
        let w = c.stack.width;
        Self {
            token: EmbeddingConfig::new(c.vocab, w).init(device),
            pos: Param::from_tensor(Tensor::zeros([c.context, w], device)),
            blocks: stack(&c.stack, device),
            ln_final: LayerNormConfig::new(w).with_epsilon(c.stack.eps).init(device),
            proj: c.proj.map(|d| LinearConfig::new(w, d).with_bias(false).init(device)),
            eos: c.eos.unwrap_or(0),
        }
    }

    /// The number of token positions.
    pub fn context(&self) -> usize {
        self.pos.dims()[0]
    }

    /// Features of token id rows (each `context()` long).
    pub fn forward(&self, ids: &[Vec<u32>]) -> Tensor<2> {
        let device = self.pos.val().device();
        let (n, l) = (ids.len(), self.context());
        let w = self.pos.dims()[1];
        let flat: Vec<i64> = ids.iter().flat_map(|r| r.iter().map(|&t| t as i64)).collect();
        let ids_t = Tensor::<2, Int>::from_data(TensorData::new(flat, [n, l]), &device);
        let x = self.token.forward(ids_t) + self.pos.val().unsqueeze::<3>();
        let causal: Vec<bool> = (0..l * l).map(|k| k % l > k / l).collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(causal, [l, l]), &device);
        let x = self.ln_final.forward(run(&self.blocks, x, Some(&mask)));
        // The pooled position of each row: the end token.
        let rows: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = if self.eos == 0 {
                    // The first largest id, as torch's argmax.
                    let max = r.iter().copied().max().unwrap_or(0);
                    r.iter().position(|&t| t == max).unwrap_or(0)
                } else {
                    r.iter().position(|&t| t as usize == self.eos).unwrap_or(0)
                };
                (i * l + at) as i64
            })
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let pooled = x.reshape([n * l, w]).select(0, idx);
        match &self.proj {
            Some(p) => p.forward(pooled),
            None => pooled,
        }
    }
}
