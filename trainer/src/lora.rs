//! Low-rank adapters (LoRA) on linear and convolution weights (spec §8): `W x + (α/r)·B A x` with
//! the base `W` frozen, `A` initialised small and random and `B` at zero, so an adapted network
//! starts exactly at its base. With the adapters off it *is* the base — the reference model of
//! FAV. `merged()` folds `(α/r)·B A` into `W` for inference; tensors are named the PEFT way
//! (`<path>.lora_A.weight`, `<path>.lora_B.weight`).

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

/// Adapter shape: rank and scale `α / r`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// `A` is drawn from U(−1/√fan_in, 1/√fan_in) (PEFT's Kaiming-uniform with a = √5), `B` is zero.
fn init_a<const D: usize>(shape: [usize; D], fan_in: usize, device: &Device) -> Param<Tensor<D>> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Param::from_tensor(Tensor::random(shape, Distribution::Uniform(-bound, bound), device))
}

/// A frozen linear layer with an adapter.
#[derive(Module, Debug)]
pub struct LoraLinear {
    pub base: Linear,
    /// `[rank, in]`.
    pub lora_a: Param<Tensor<2>>,
    /// `[out, rank]`.
    pub lora_b: Param<Tensor<2>>,
    pub scale: f32,
    /// Off: the layer is its base.
    pub enabled: bool,
}

impl LoraLinear {
    pub fn new(base: Linear, cfg: LoraConfig, device: &Device) -> Self {
        let [d_in, d_out] = base.weight.dims();
        Self {
            base: base.no_grad(),
            lora_a: init_a([cfg.rank, d_in], d_in, device),
            lora_b: Param::from_tensor(Tensor::zeros([d_out, cfg.rank], device)),
            scale: cfg.scale(),
            enabled: true,
        }
    }

    /// `x: [batch, in]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.base.forward(x.clone());
        if !self.enabled {
            return y;
        }
        // burn stores linear weights as [in, out]: x·W. The adapter path is x·Aᵀ·Bᵀ.
        let low = x.matmul(self.lora_a.val().transpose());
        y + low.matmul(self.lora_b.val().transpose()).mul_scalar(self.scale)
    }

    /// The base layer with `(α/r)·B A` folded into its weight.
    pub fn merged(&self) -> Linear {
        let delta = self.lora_b.val().matmul(self.lora_a.val()).mul_scalar(self.scale); // [out, in]
        let mut m = self.base.clone();
        m.weight = Param::from_tensor(m.weight.val() + delta.transpose());
        m
    }
}

/// A frozen 2-D convolution with an adapter: `A` is a convolution with the base's kernel,
/// stride and padding into `rank` channels, `B` a 1×1 convolution back out.
#[derive(Module, Debug)]
pub struct LoraConv2d {
    pub base: Conv2d,
    /// `[rank, in, kh, kw]`.
    pub lora_a: Param<Tensor<4>>,
    /// `[out, rank, 1, 1]`.
    pub lora_b: Param<Tensor<4>>,
    pub scale: f32,
    pub enabled: bool,
}

impl LoraConv2d {
    pub fn new(base: Conv2d, cfg: LoraConfig, device: &Device) -> Self {
        assert_eq!(base.groups, 1, "LoRA on grouped convolutions is not supported");
        let [d_out, d_in, kh, kw] = base.weight.dims();
        Self {
            base: base.no_grad(),
            lora_a: init_a([cfg.rank, d_in, kh, kw], d_in * kh * kw, device),
            lora_b: Param::from_tensor(Tensor::zeros([d_out, cfg.rank, 1, 1], device)),
            scale: cfg.scale(),
            enabled: true,
        }
    }

    /// `x: [batch, in, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.base.forward(x.clone());
        if !self.enabled {
            return y;
        }
        // A convolves like the base (kernel, stride, dilation, padding), into `rank` channels.
        let b = &self.base;
        let a = Conv2d {
            weight: self.lora_a.clone(),
            bias: None,
            stride: b.stride,
            kernel_size: b.kernel_size,
            dilation: b.dilation,
            groups: 1,
            padding: b.padding.clone(),
        };
        let low = a.forward(x);
        let up = conv2d(low, self.lora_b.val(), None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        y + up.mul_scalar(self.scale)
    }

    /// The base convolution with `(α/r)·B A` folded into its kernel.
    pub fn merged(&self) -> Conv2d {
        let [d_out, rank, _, _] = self.lora_b.dims();
        let [_, d_in, kh, kw] = self.lora_a.dims();
        let b = self.lora_b.val().reshape([d_out, rank]);
        let a = self.lora_a.val().reshape([rank, d_in * kh * kw]);
        let delta = b.matmul(a).reshape([d_out, d_in, kh, kw]).mul_scalar(self.scale);
        let mut m = self.base.clone();
        m.weight = Param::from_tensor(m.weight.val() + delta);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{LinearConfig, PaddingConfig2d};

    fn close(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Starts at the base; after B moves, forward equals the merged layer's forward (to float
    /// rounding, 1e-5 on O(1) values); off means base.
    #[test]
    fn linear_adapter_starts_at_base_and_merges_exactly() {
        let dev = Device::flex();
        let cfg = LoraConfig { rank: 4, alpha: 8.0 };
        let base = LinearConfig::new(16, 8).init(&dev);
        let mut l = LoraLinear::new(base.clone(), cfg, &dev);
        let x = Tensor::<2>::random([5, 16], Distribution::Normal(0.0, 1.0), &dev);
        assert_eq!(close(l.forward(x.clone()), base.forward(x.clone())), 0.0);
        l.lora_b = Param::from_tensor(Tensor::random([8, 4], Distribution::Normal(0.0, 0.5), &dev));
        let adapted = l.forward(x.clone());
        assert!(close(adapted.clone(), base.forward(x.clone())) > 1e-2, "the adapter changes the output");
        assert!(close(adapted, l.merged().forward(x.clone())) < 1e-5);
        l.enabled = false;
        assert_eq!(close(l.forward(x.clone()), base.forward(x)), 0.0);
    }

    #[test]
    fn conv_adapter_merges_exactly() {
        let dev = Device::flex();
        let cfg = LoraConfig { rank: 2, alpha: 2.0 };
        let base = Conv2dConfig::new([3, 6], [3, 3]).with_padding(PaddingConfig2d::Same).init(&dev);
        let mut c = LoraConv2d::new(base.clone(), cfg, &dev);
        c.lora_b = Param::from_tensor(Tensor::random([6, 2, 1, 1], Distribution::Normal(0.0, 0.5), &dev));
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let flat = |t: Tensor<4>| t.reshape([2, 6 * 64]);
        assert!(close(flat(c.forward(x.clone())), flat(base.forward(x.clone()))) > 1e-2);
        assert!(close(flat(c.forward(x.clone())), flat(c.merged().forward(x))) < 1e-5);
    }

    /// Only the adapters train: the frozen base gets no gradient.
    #[test]
    fn only_adapters_get_gradients() {
        let dev = Device::flex().autodiff();
        let l = LoraLinear::new(LinearConfig::new(4, 3).init(&dev), LoraConfig { rank: 2, alpha: 2.0 }, &dev);
        let x = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &dev);
        let grads = l.forward(x).sum().backward();
        assert!(l.lora_b.val().grad(&grads).is_some(), "B (zero-initialised) gets a gradient");
        assert!(l.base.weight.val().grad(&grads).is_none(), "the base is frozen");
    }
}
