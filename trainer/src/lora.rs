//! Low-rank adapters (LoRA) applied from outside to any module, by module path (spec §8, §11).
//!
//! A model is written plainly (burn `Linear`, `Conv2d`, …) and knows nothing of adapters.
//! [`adapt`] freezes every parameter and reparameterises the weights of the targeted layers as
//! `W + (α/r)·ΔW`: linear weights through burn's own [`Lora`] (`Module::apply_lora`, factors
//! `A [in, r]`, `B [r, out]`), convolution kernels through [`ConvLora`] here (`A [r, in, kh, kw]`,
//! `B [out, r, 1, 1]`, PEFT's layout). `B` starts at zero, so the adapted model *is* its base
//! until it trains; `A` is drawn as PEFT draws it: Kaiming-uniform `U(±1/√fan_in)` (PEFT's
//! default) or `N(0, 1/r)` ("gaussian", what the text-to-image reference uses, §11.1). The
//! reference model of FAV is the base itself (the adapters off). [`merged`] folds the adapters into the weights for inference, and
//! [`peft_tensors`] names them as PEFT does (`<path>.lora_A.weight` `[r, in…]`,
//! `<path>.lora_B.weight` `[out, r…]`), so diffusers and PEFT load them back.

use crate::tensors::{read, DeviceError};
use burn::module::{Lora, Module, Param, ParamGroup, Reparameterization, Reparameterizer};
use burn::tensor::{Distribution, FloatDType, Tensor};

/// How the `A` factors start (`B` starts at zero either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// PEFT's default: `U(−1/√fan_in, 1/√fan_in)` (Kaiming-uniform with a = √5).
    Kaiming,
    /// PEFT's `init_lora_weights="gaussian"`: `N(0, 1/r)`.
    Gaussian,
}

/// Adapter shape: rank, scale `α / r`, and how `A` starts.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub init: LoraInit,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// `(parameter path, dims)` of every float parameter, adapter factors included.
fn params<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    crate::tensors::each_param(module, |path, dims, _| out.push((path.to_string(), dims.to_vec())));
    out
}

/// The module paths of the layers that can carry an adapter: every layer with a 2-D (linear) or
/// 4-D (2-D convolution) `weight`, in module order.
pub fn layers<M: Module>(module: &M) -> Vec<String> {
    params(module)
        .into_iter()
        .filter(|(p, dims)| matches!(dims.len(), 2 | 4) && p.ends_with(".weight"))
        .map(|(p, _)| p.trim_end_matches(".weight").to_string())
        .collect()
}

/// `(fan_in, fan_out)` of each targeted layer's weight: `(in, out)` of a linear `[in, out]`,
/// `(in·kh·kw, out)` of a convolution `[out, in, kh, kw]` — an adapter of rank r has
/// `r·(fan_in + fan_out)` numbers.
pub fn layer_shapes<M: Module>(module: &M, targets: &Targets) -> Vec<(usize, usize)> {
    params(module)
        .into_iter()
        .filter(|(p, _)| targets.0.iter().any(|t| *p == format!("{t}.weight")))
        .map(|(_, dims)| match dims.len() {
            2 => (dims[0], dims[1]),
            _ => (dims[1..].iter().product(), dims[0]),
        })
        .collect()
}

/// Which layers get adapters, by module path (`fc`, `convs.2`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Targets(pub Vec<String>);

impl Targets {
    /// Resolve config names against a model's adaptable `layers`: a name is a layer path, a
    /// group (`convs` selects every `convs.N`, `down` every `down.…`), or `all`. An unknown name
    /// is an error naming it and the valid ones.
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

    fn weight_paths(&self) -> Vec<String> {
        self.0.iter().map(|l| format!("{l}.weight")).collect()
    }
}

/// The adapter of a convolution kernel `[out, in/groups, kh, kw]`: `ΔW = scale · B·A` with `A`
/// a convolution into `r` channels and `B` a 1×1 convolution out of them (PEFT's conv LoRA; in
/// weight space it covers grouped kernels too).
#[derive(Module, Debug)]
pub struct ConvLora {
    /// `[r, in/groups, kh, kw]`.
    pub a: Param<Tensor<4>>,
    /// `[out, r, 1, 1]`.
    pub b: Param<Tensor<4>>,
    pub scale: f64,
}

impl Reparameterization for ConvLora {
    const NAME: &'static str = "lora";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let [out, r, _, _] = self.b.dims();
        let [_, i, kh, kw] = self.a.dims();
        let delta = self.b.val().reshape([out, r]).matmul(self.a.val().reshape([r, i * kh * kw]));
        let shape = base.shape();
        // At the factors' dtype, as burn's linear adapter composes.
        base.cast(FloatDType::from(delta.dtype())) + delta.mul_scalar(self.scale).reshape(shape)
    }
}

/// Attaches [`ConvLora`] to the targeted 4-D weights (the base is already frozen).
struct ConvLoraizer {
    cfg: LoraConfig,
    targets: Vec<String>,
}

impl Reparameterizer for ConvLoraizer {
    type Reparam = ConvLora;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<ConvLora>) {
        if D != 4 || !self.targets.iter().any(|t| t == path) {
            return (param, None);
        }
        let dims = param.val().dims();
        let device = param.val().device();
        let r = self.cfg.rank;
        let std = 1.0 / r as f64;
        let a = Tensor::<4>::random([r, dims[1], dims[2], dims[3]], Distribution::Normal(0.0, std), &device);
        let b = Tensor::<4>::zeros([dims[0], r, 1, 1], &device);
        (param, Some(ConvLora { a: Param::from_tensor(a), b: Param::from_tensor(b), scale: self.cfg.scale() }))
    }
}

/// The device generator is one per process, so thread ranks adapting at once would interleave
/// their draws and start from different adapters. Seeding and drawing hold this lock.
static DEVICE_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Freeze every parameter of `module` and attach adapters to the `targets` layers. The `A`
/// factors are drawn from the device generator of `device`, seeded with `seed`, layer by layer
/// in module order, so the same seed gives the same adapters on every rank and every run.
pub fn adapt<M: Module>(module: M, cfg: LoraConfig, targets: &Targets, seed: u64, device: &burn::tensor::Device) -> M {
    let weights = targets.weight_paths();
    // A panic elsewhere while holding it leaves nothing half-drawn that matters here.
    let _draws = DEVICE_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    // burn's Lora adapts the 2-D weights of the group and freezes everything else. The factors
    // are float32 whatever the base's dtype (a bf16 base trains float32 adapters, spec §11.1).
    let lora = Lora::new(cfg.rank, cfg.alpha).set_param_group(ParamGroup::from_paths(weights.clone()));
    let module = module.apply_lora(lora.set_dtype(FloatDType::F32));
    let module = module.apply_reparameterization(ConvLoraizer { cfg, targets: weights });
    match cfg.init {
        LoraInit::Gaussian => module,
        LoraInit::Kaiming => {
            device.seed(seed);
            redraw(module, Factor::A, Draw::Kaiming)
        }
    }
}

/// One of an adapter's two factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    A,
    B,
}

/// How [`redraw`] sets a factor.
#[derive(Clone, Copy, Debug)]
pub enum Draw {
    /// `U(±1/√fan_in)`, drawn in PEFT's layout (`[r, in]`, `[r, in, kh, kw]`), so the numbers
    /// are PEFT's for the same generator state.
    Kaiming,
    /// `N(0, std)`.
    Normal(f64),
    /// Every entry this value.
    Constant(f64),
}

/// Every adapter's `factor` set as `draw` says, layer by layer in module order, drawing from
/// the factors' device generator.
pub fn redraw<M: Module>(module: M, factor: Factor, draw: Draw) -> M {
    module.map(&mut Redraw { path: Vec::new(), factor, draw })
}

struct Redraw {
    path: Vec<String>,
    factor: Factor,
    draw: Draw,
}

impl burn::module::ModuleMapper for Redraw {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let suffix = match self.factor {
            Factor::A => "lora.a",
            Factor::B => "lora.b",
        };
        if !self.path.join(".").ends_with(suffix) {
            return p;
        }
        let t = p.val();
        let (dims, device) = (t.dims(), t.device());
        let value: Tensor<D> = match self.draw {
            Draw::Constant(v) => t.ones_like().mul_scalar(v),
            Draw::Normal(std) => Tensor::random(t.shape(), Distribution::Normal(0.0, std), &device),
            // burn's linear A is [in, r]: draw PEFT's [r, in] and transpose.
            Draw::Kaiming if D == 2 => {
                let bound = 1.0 / (dims[0] as f64).sqrt();
                let peft = Tensor::<2>::random([dims[1], dims[0]], Distribution::Uniform(-bound, bound), &device);
                peft.transpose().reshape(t.shape())
            }
            Draw::Kaiming => {
                let fan_in: usize = dims[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                Tensor::random(t.shape(), Distribution::Uniform(-bound, bound), &device)
            }
        };
        Param::initialized(p.id, value).set_require_grad(true)
    }
}

/// The adapters folded into the weights: a plain module with the base's names and shapes.
pub fn merged<M: Module>(module: &M) -> M {
    module.valid().materialize()
}

/// One named tensor for export: name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The adapters under PEFT names, unscaled (rank and α go in the adapter config), in module
/// order: `lora_A.weight` `[r, in]` / `[r, in, kh, kw]`, `lora_B.weight` `[out, r]` / `[out, r, 1, 1]`.
/// `Err`: the device failed computing an adapter (the first failure).
pub fn peft_tensors<M: Module>(module: &M) -> Result<Vec<NamedTensor>, DeviceError> {
    let (mut out, mut failed) = (Vec::new(), None);
    // Only the adapters' values are read (a base can be large).
    crate::tensors::each_param(module, |path, dims, t| {
        let Some((layer, factor)) = path
            .strip_suffix(".weight.lora.a")
            .map(|l| (l, 'A'))
            .or_else(|| path.strip_suffix(".weight.lora.b").map(|l| (l, 'B')))
        else {
            return;
        };
        let (shape, values) = match dims.len() {
            // burn's linear factors are the transposes of PEFT's: A [in, r] → [r, in].
            2 => (vec![dims[1], dims[0]], read(&t.reshape([dims[0], dims[1]]).transpose())),
            _ => (dims.to_vec(), read(&t)),
        };
        match values {
            Ok(values) => out.push((format!("{layer}.lora_{factor}.weight"), shape, values)),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    });
    failed.map_or(Ok(out), Err)
}

/// Named f32 tensors as safetensors bytes, with `format = pt` metadata as PEFT writes it.
pub fn tensors_bytes(tensors: &[NamedTensor]) -> Result<Vec<u8>, String> {
    tensors_bytes_with(tensors, &[])
}

/// [`tensors_bytes`] with more metadata entries.
pub fn tensors_bytes_with(tensors: &[NamedTensor], metadata: &[(&str, String)]) -> Result<Vec<u8>, String> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| e.to_string())?;
    // The metadata goes in afterwards, sorted: safetensors takes it as a HashMap, whose order
    // (and so the file's bytes) would change from one process to the next.
    let raw = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&raw[8..8 + n]).map_err(|e| e.to_string())?;
    let mut meta = std::collections::BTreeMap::from([("format".to_string(), "pt".to_string())]);
    meta.extend(metadata.iter().map(|(k, v)| (k.to_string(), v.clone())));
    header["__metadata__"] = serde_json::json!(meta);
    let mut h = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // The data stays 8-byte aligned, as safetensors pads its header.
    h.resize(h.len().next_multiple_of(8), b' ');
    Ok([&(h.len() as u64).to_le_bytes()[..], &h, &raw[8 + n..]].concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
    use burn::optim::GradientsParams;
    use burn::tensor::Device;

    #[derive(Module, Debug)]
    struct Net {
        fc: Linear,
        convs: Vec<Conv2d>,
    }

    impl Net {
        fn new(device: &Device) -> Self {
            let conv = |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Same).init(device);
            Self { fc: LinearConfig::new(6, 4).init(device), convs: vec![conv(3, 5), conv(5, 2)] }
        }

        fn forward(&self, v: Tensor<2>, img: Tensor<4>) -> (Tensor<2>, Tensor<4>) {
            (self.fc.forward(v), self.convs[1].forward(self.convs[0].forward(img)))
        }
    }

    fn max_abs<const D: usize>(t: Tensor<D>) -> f32 {
        t.abs().max().into_scalar::<f32>()
    }

    fn all(net: &Net) -> Targets {
        Targets::parse(&["all".to_string()], &layers(net)).unwrap()
    }

    /// Every layer found by path; at init the adapted model equals the base bit for bit; after
    /// B moves, the merged model reproduces the adapted one (1e-5 on O(1) values: the same sums
    /// in another order); PEFT names and shapes.
    #[test]
    fn adapters_start_at_the_base_merge_exactly_and_export_peft_names() {
        let dev = Device::flex();
        dev.seed(3);
        let base = Net::new(&dev);
        assert_eq!(layers(&base), vec!["fc", "convs.0", "convs.1"]);
        let v = Tensor::<2>::random([5, 6], Distribution::Normal(0.0, 1.0), &dev);
        let img = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &dev);
        let (v0, i0) = base.forward(v.clone(), img.clone());
        let cfg = LoraConfig { rank: 2, alpha: 4.0, init: LoraInit::Kaiming };
        let mut net = adapt(base.clone(), cfg, &all(&base), 9, &dev);
        let (v1, i1) = net.forward(v.clone(), img.clone());
        assert_eq!((max_abs(v0.clone() - v1), max_abs(i0.clone() - i1)), (0.0, 0.0), "B = 0: the base itself");

        // Move every B factor away from zero, as training would.
        net = redraw(net, Factor::B, Draw::Normal(0.5));
        let (v2, i2) = net.forward(v.clone(), img.clone());
        assert!(max_abs(v2.clone() - v0) > 1e-2 && max_abs(i2.clone() - i0) > 1e-2, "the adapters change the output");
        let m = merged(&net);
        let (v3, i3) = m.forward(v, img);
        assert!(max_abs(v2 - v3) < 1e-5 && max_abs(i2 - i3) < 1e-5);
        assert_eq!(layers(&m), layers(&base), "merged: the base's names");

        let t = peft_tensors(&net).unwrap();
        let names: Vec<(&str, &[usize])> = t.iter().map(|(n, s, _)| (n.as_str(), s.as_slice())).collect();
        assert_eq!(
            names,
            vec![
                ("fc.lora_A.weight", &[2usize, 6][..]),
                ("fc.lora_B.weight", &[4, 2][..]),
                ("convs.0.lora_A.weight", &[2, 3, 3, 3][..]),
                ("convs.0.lora_B.weight", &[5, 2, 1, 1][..]),
                ("convs.1.lora_A.weight", &[2, 5, 3, 3][..]),
                ("convs.1.lora_B.weight", &[2, 2, 1, 1][..]),
            ]
        );
    }

    /// Only the adapters of the targeted layers train; every base weight is frozen.
    #[test]
    fn only_targeted_adapters_get_gradients() {
        let dev = Device::flex().autodiff();
        let base = Net::new(&dev);
        let targets = Targets::parse(&["convs.1".to_string()], &layers(&base)).unwrap();
        let cfg = LoraConfig { rank: 2, alpha: 2.0, init: LoraInit::Gaussian };
        let net = adapt(base, cfg, &targets, 1, &dev).train();
        let v = Tensor::<2>::ones([3, 6], &dev);
        let img = Tensor::<4>::ones([1, 3, 4, 4], &dev);
        let (a, b) = net.forward(v, img);
        let grads = GradientsParams::from_grads((a.sum() + b.sum()).backward(), &net);
        assert_eq!(params(&net).len(), 8, "fc w/b, convs.0 w/b, convs.1 w/b and its A, B");
        assert_eq!(grads.len(), 2, "A and B of convs.1 only");
    }

    #[test]
    fn targets_parse_groups_and_refuse_unknown_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let layers = names(&["fc", "convs.0", "convs.1", "convs.10"]);
        assert_eq!(Targets::parse(&names(&["fc", "convs"]), &layers).unwrap().0, layers);
        assert_eq!(Targets::parse(&names(&["all"]), &layers).unwrap().0, layers);
        let t = Targets::parse(&names(&["convs.1"]), &layers).unwrap();
        assert_eq!(t.0, names(&["convs.1"]), "convs.1 is not a prefix of convs.10");
        let e = Targets::parse(&names(&["attn"]), &layers).unwrap_err();
        assert!(e.contains("\"attn\"") && e.contains("convs.10"), "{e}");
        assert!(Targets::parse(&names(&["conv"]), &layers).is_err(), "a prefix is not a group");
        assert!(Targets::parse(&[], &layers).is_err());
    }
}
