//! Low-rank adapters (LoRA) on linear and convolution weights (spec §8). A layer is trained
//! plainly (pretraining), then [`adapt`](LoraLinear::adapt)ed: its base weights are frozen and
//! `(α/r)·B A` is added, with `A` small and random and `B` zero, so the adapted network starts
//! exactly at its base. With the adapter switched off it *is* the base — the reference model of
//! FAV. [`merged`](LoraLinear::merged) folds the adapter into the base weight for inference, and
//! [`lora_tensors`](LoraLinear::lora_tensors) names the adapter the PEFT way
//! (`<path>.lora_A.weight` `[r, in…]`, `<path>.lora_B.weight` `[out, r…]`).

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

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

/// Which layers of a generator get adapters, by module path (`fc`, `convs.2`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Targets(pub Vec<String>);

impl Targets {
    /// Resolve config names against a generator's adaptable `layers`: a name is a layer path, a
    /// group (`convs` selects every `convs.N`), or `all`. An unknown name is an error naming it
    /// and the valid ones.
    pub fn parse(names: &[String], layers: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Err("name at least one layer".into());
        }
        let matches = |name: &str, layer: &str| {
            name == "all" || layer == name || layer.strip_prefix(name).is_some_and(|rest| rest.starts_with('.'))
        };
        if let Some(bad) = names.iter().find(|n| !layers.iter().any(|l| matches(n, l))) {
            return Err(format!("unknown layer {bad:?}; expected \"all\" or one of {}", layers.join(", ")));
        }
        let chosen = layers.iter().filter(|l| names.iter().any(|n| matches(n, l))).cloned().collect();
        Ok(Self(chosen))
    }

    pub fn wants(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
    }
}

/// One named tensor for export: name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

fn named<const D: usize>(name: String, t: &Tensor<D>) -> NamedTensor {
    let data: TensorData = t.to_data().convert::<f32>();
    let shape = data.shape().to_vec();
    (name, shape, data.try_into_vec::<f32>().expect("f32 tensor"))
}

/// Named tensors as f32 safetensors bytes, with `format = pt` metadata as PEFT writes it.
pub fn tensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>, String> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| e.to_string())?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())
}

/// Write named tensors as a safetensors file (atomically: temporary file, then rename).
pub fn save_tensors(tensors: &[NamedTensor], path: &std::path::Path) -> Result<(), String> {
    crate::io::write_atomic(path, &tensors_bytes(tensors)?).map_err(|e| e.to_string())
}

/// `<path>.lora_A.weight` and `<path>.lora_B.weight`.
fn peft_pair<const D: usize>(path: &str, a: &Param<Tensor<D>>, b: &Param<Tensor<D>>) -> Vec<NamedTensor> {
    vec![named(format!("{path}.lora_A.weight"), &a.val()), named(format!("{path}.lora_B.weight"), &b.val())]
}

/// The adapter of a linear layer.
#[derive(Module, Debug)]
pub struct LinearAdapter {
    /// `[rank, in]`.
    pub a: Param<Tensor<2>>,
    /// `[out, rank]`.
    pub b: Param<Tensor<2>>,
    pub scale: f32,
    /// Off: the layer is its base.
    pub enabled: bool,
}

/// A linear layer that can carry an adapter.
#[derive(Module, Debug)]
pub struct LoraLinear {
    pub base: Linear,
    pub lora: Option<LinearAdapter>,
}

impl LoraLinear {
    /// A plain, trainable layer (no adapter yet).
    pub fn plain(base: Linear) -> Self {
        Self { base, lora: None }
    }

    /// Freeze the base without an adapter (a layer LoRA does not target).
    pub fn frozen(self) -> Self {
        Self { base: self.base.no_grad(), lora: None }
    }

    /// Freeze the base and attach a fresh adapter.
    pub fn adapt(self, cfg: LoraConfig, device: &Device) -> Self {
        let [d_in, d_out] = self.base.weight.dims();
        let lora = LinearAdapter {
            a: init_a([cfg.rank, d_in], d_in, device),
            b: Param::from_tensor(Tensor::zeros([d_out, cfg.rank], device)),
            scale: cfg.scale(),
            enabled: true,
        };
        Self { base: self.base.no_grad(), lora: Some(lora) }
    }

    /// Switch the adapter on or off (off: the reference model).
    pub fn set_enabled(&mut self, on: bool) {
        if let Some(l) = &mut self.lora {
            l.enabled = on;
        }
    }

    /// `x: [batch, in]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.base.forward(x.clone());
        match &self.lora {
            // burn stores linear weights as [in, out] (x·W); the adapter path is x·Aᵀ·Bᵀ.
            Some(l) if l.enabled => {
                y + x.matmul(l.a.val().transpose()).matmul(l.b.val().transpose()).mul_scalar(l.scale)
            }
            _ => y,
        }
    }

    /// Adapt when `targets` names `path`, else freeze.
    pub fn adapt_if(self, path: &str, targets: &Targets, cfg: LoraConfig, device: &Device) -> Self {
        if targets.wants(path) {
            self.adapt(cfg, device)
        } else {
            self.frozen()
        }
    }

    /// The layer's derivative along `dx` (forward-mode): the layer without its bias.
    pub fn tangent(&self, dx: Tensor<2>) -> Tensor<2> {
        let y = self.forward(dx);
        match &self.base.bias {
            Some(b) => y - b.val().unsqueeze::<2>(),
            None => y,
        }
    }

    /// The base layer with `(α/r)·B A` folded into its weight.
    pub fn merged(&self) -> Linear {
        let mut m = self.base.clone();
        if let Some(l) = &self.lora {
            let delta = l.b.val().matmul(l.a.val()).mul_scalar(l.scale); // [out, in]
            m.weight = Param::from_tensor(m.weight.val() + delta.transpose());
        }
        m
    }

    /// The adapter's tensors under PEFT names, unscaled (α and r go in the adapter config).
    pub fn lora_tensors(&self, path: &str) -> Vec<NamedTensor> {
        self.lora.as_ref().map_or_else(Vec::new, |l| peft_pair(path, &l.a, &l.b))
    }
}

/// The adapter of a convolution: `A` convolves like the base into `rank` channels, `B` is 1×1.
#[derive(Module, Debug)]
pub struct ConvAdapter {
    /// `[rank, in, kh, kw]`.
    pub a: Param<Tensor<4>>,
    /// `[out, rank, 1, 1]`.
    pub b: Param<Tensor<4>>,
    pub scale: f32,
    pub enabled: bool,
}

/// A 2-D convolution that can carry an adapter.
#[derive(Module, Debug)]
pub struct LoraConv2d {
    pub base: Conv2d,
    pub lora: Option<ConvAdapter>,
}

impl LoraConv2d {
    pub fn plain(base: Conv2d) -> Self {
        Self { base, lora: None }
    }

    /// Freeze the base without an adapter (a layer LoRA does not target).
    pub fn frozen(self) -> Self {
        Self { base: self.base.no_grad(), lora: None }
    }

    /// Freeze the base and attach a fresh adapter.
    pub fn adapt(self, cfg: LoraConfig, device: &Device) -> Self {
        assert_eq!(self.base.groups, 1, "LoRA on grouped convolutions is not supported");
        let [d_out, d_in, kh, kw] = self.base.weight.dims();
        let lora = ConvAdapter {
            a: init_a([cfg.rank, d_in, kh, kw], d_in * kh * kw, device),
            b: Param::from_tensor(Tensor::zeros([d_out, cfg.rank, 1, 1], device)),
            scale: cfg.scale(),
            enabled: true,
        };
        Self { base: self.base.no_grad(), lora: Some(lora) }
    }

    pub fn set_enabled(&mut self, on: bool) {
        if let Some(l) = &mut self.lora {
            l.enabled = on;
        }
    }

    /// `x: [batch, in, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.base.forward(x.clone());
        let Some(l) = self.lora.as_ref().filter(|l| l.enabled) else { return y };
        let b = &self.base;
        // A convolves like the base (kernel, stride, dilation, padding), into `rank` channels.
        let a = Conv2d {
            weight: l.a.clone(),
            bias: None,
            stride: b.stride,
            kernel_size: b.kernel_size,
            dilation: b.dilation,
            groups: 1,
            padding: b.padding.clone(),
        };
        let up = conv2d(a.forward(x), l.b.val(), None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        y + up.mul_scalar(l.scale)
    }

    /// Adapt when `targets` names `path`, else freeze.
    pub fn adapt_if(self, path: &str, targets: &Targets, cfg: LoraConfig, device: &Device) -> Self {
        if targets.wants(path) {
            self.adapt(cfg, device)
        } else {
            self.frozen()
        }
    }

    /// The convolution's derivative along `dx` (forward-mode): the convolution without its bias.
    pub fn tangent(&self, dx: Tensor<4>) -> Tensor<4> {
        let y = self.forward(dx);
        match &self.base.bias {
            Some(b) => {
                let c = b.dims()[0];
                y - b.val().reshape([1, c, 1, 1])
            }
            None => y,
        }
    }

    /// The base convolution with `(α/r)·B A` folded into its kernel.
    pub fn merged(&self) -> Conv2d {
        let mut m = self.base.clone();
        if let Some(l) = &self.lora {
            let [d_out, rank, _, _] = l.b.dims();
            let [_, d_in, kh, kw] = l.a.dims();
            let b = l.b.val().reshape([d_out, rank]);
            let a = l.a.val().reshape([rank, d_in * kh * kw]);
            let delta = b.matmul(a).reshape([d_out, d_in, kh, kw]).mul_scalar(l.scale);
            m.weight = Param::from_tensor(m.weight.val() + delta);
        }
        m
    }

    pub fn lora_tensors(&self, path: &str) -> Vec<NamedTensor> {
        self.lora.as_ref().map_or_else(Vec::new, |l| peft_pair(path, &l.a, &l.b))
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
    /// rounding, 1e-5 on O(1) values); off means base; PEFT names and shapes.
    #[test]
    fn linear_adapter_starts_at_base_merges_exactly_and_exports_peft_names() {
        let dev = Device::flex();
        let cfg = LoraConfig { rank: 4, alpha: 8.0 };
        let base = LinearConfig::new(16, 8).init(&dev);
        let mut l = LoraLinear::plain(base.clone()).adapt(cfg, &dev);
        let x = Tensor::<2>::random([5, 16], Distribution::Normal(0.0, 1.0), &dev);
        assert_eq!(close(l.forward(x.clone()), base.forward(x.clone())), 0.0);
        l.lora.as_mut().unwrap().b = Param::from_tensor(Tensor::random([8, 4], Distribution::Normal(0.0, 0.5), &dev));
        let adapted = l.forward(x.clone());
        assert!(close(adapted.clone(), base.forward(x.clone())) > 1e-2, "the adapter changes the output");
        assert!(close(adapted, l.merged().forward(x.clone())) < 1e-5);
        let t = l.lora_tensors("fc");
        assert_eq!((t[0].0.as_str(), t[0].1.as_slice()), ("fc.lora_A.weight", &[4usize, 16][..]));
        assert_eq!((t[1].0.as_str(), t[1].1.as_slice()), ("fc.lora_B.weight", &[8usize, 4][..]));
        l.set_enabled(false);
        assert_eq!(close(l.forward(x.clone()), base.forward(x)), 0.0);
        assert!(LoraLinear::plain(base).lora_tensors("fc").is_empty());
    }

    #[test]
    fn conv_adapter_merges_exactly() {
        let dev = Device::flex();
        let cfg = LoraConfig { rank: 2, alpha: 2.0 };
        let base = Conv2dConfig::new([3, 6], [3, 3]).with_padding(PaddingConfig2d::Same).init(&dev);
        let mut c = LoraConv2d::plain(base.clone()).adapt(cfg, &dev);
        c.lora.as_mut().unwrap().b =
            Param::from_tensor(Tensor::random([6, 2, 1, 1], Distribution::Normal(0.0, 0.5), &dev));
        let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let flat = |t: Tensor<4>| t.reshape([2, 6 * 64]);
        assert!(close(flat(c.forward(x.clone())), flat(base.forward(x.clone()))) > 1e-2);
        assert!(close(flat(c.forward(x.clone())), flat(c.merged().forward(x))) < 1e-5);
        let t = c.lora_tensors("convs.0");
        assert_eq!(t[0].1, vec![2, 3, 3, 3]);
        assert_eq!(t[1].1, vec![6, 2, 1, 1]);
    }

    /// A plain layer trains its base; an adapted one only its adapter.
    #[test]
    fn only_adapters_get_gradients_once_adapted() {
        let dev = Device::flex().autodiff();
        let x = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &dev);
        let plain = LoraLinear::plain(LinearConfig::new(4, 3).init(&dev));
        let grads = plain.forward(x.clone()).sum().backward();
        assert!(plain.base.weight.val().grad(&grads).is_some(), "a plain layer trains");
        let l = plain.adapt(LoraConfig { rank: 2, alpha: 2.0 }, &dev);
        let grads = l.forward(x).sum().backward();
        assert!(l.lora.as_ref().unwrap().b.val().grad(&grads).is_some(), "B (zero-initialised) gets a gradient");
        assert!(l.base.weight.val().grad(&grads).is_none(), "the base is frozen");
    }
}
