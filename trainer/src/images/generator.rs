//! The one-step, class-conditional convolutional image generator (GAN-style): noise and a class
//! → 4×4 feature map → three (nearest ×2 upsample, 3×3 conv, pixel norm, SiLU) blocks → 3×3 conv → tanh, a
//! 32×32 RGB image in [−1, 1]. Every weight sits in a LoRA-capable layer, so the pretrained
//! generator can be adapted without touching its base (spec §8).

use super::shapes::{CLASSES, SIZE};
use crate::lora::{LoraConfig, LoraConv2d, LoraLinear, Targets};
use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Noise dimension.
pub const LATENT: usize = 32;
const WIDTH: [usize; 4] = [64, 32, 16, 16];

#[derive(Module, Debug)]
pub struct ConvGenerator {
    /// `[noise, one-hot class]` → `WIDTH[0] × 4 × 4`.
    pub fc: LoraLinear,
    /// Upsampling blocks, then the output convolution.
    pub convs: Vec<LoraConv2d>,
}

/// Nearest-neighbour ×2 upsampling.
pub(crate) fn upsample2(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1]).expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])
}

/// Each pixel's feature vector scaled to unit RMS (ProGAN's pixelwise normalisation): keeps an
/// unnormalised generator's activations in range during adversarial training, with no
/// parameters and no train/eval difference (unlike batch norm, which would change under LoRA).
pub(crate) fn pixel_norm(h: Tensor<4>) -> Tensor<4> {
    let rms = h.clone().powf_scalar(2.0).mean_dim(1).add_scalar(1e-8).sqrt();
    h / rms
}

/// One-hot rows `[n, classes]` of `labels`.
pub fn one_hot(labels: &[usize], device: &Device) -> Tensor<2> {
    let ids: Vec<i64> = labels.iter().map(|&c| c as i64).collect();
    Tensor::<1, Int>::from_data(TensorData::new(ids, [labels.len()]), device).one_hot(CLASSES.len()).float()
}

impl ConvGenerator {
    pub fn new(device: &Device) -> Self {
        let conv = |i, o| {
            LoraConv2d::plain(
                Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device),
            )
        };
        let mut convs: Vec<LoraConv2d> = WIDTH.windows(2).map(|w| conv(w[0], w[1])).collect();
        convs.push(conv(WIDTH[3], 3));
        Self { fc: LoraLinear::plain(LinearConfig::new(LATENT + CLASSES.len(), WIDTH[0] * 16).init(device)), convs }
    }

    /// `z: [n, LATENT]`, `classes: [n, 10]` one-hot → images `[n, 3, 32, 32]`.
    pub fn forward(&self, z: Tensor<2>, classes: Tensor<2>) -> Tensor<4> {
        let n = z.dims()[0];
        let h = self.fc.forward(Tensor::cat(vec![z, classes], 1)).reshape([n, WIDTH[0], 4, 4]);
        let mut h = silu(pixel_norm(h));
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            if i < last {
                h = silu(pixel_norm(c.forward(upsample2(h))));
            } else {
                h = c.forward(h).tanh();
            }
        }
        debug_assert_eq!(h.dims(), [n, 3, SIZE, SIZE]);
        h
    }

    /// The module paths of the layers that can carry adapters.
    pub fn layer_paths() -> Vec<String> {
        std::iter::once("fc".to_string()).chain((0..WIDTH.len()).map(|i| format!("convs.{i}"))).collect()
    }

    /// Freeze every base weight and attach adapters (rank, alpha) to the `targets` layers.
    pub fn adapt(self, cfg: LoraConfig, targets: &Targets, device: &Device) -> Self {
        let fc = self.fc.adapt_if("fc", targets, cfg, device);
        let convs = self
            .convs
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.adapt_if(&format!("convs.{i}"), targets, cfg, device))
            .collect();
        Self { fc, convs }
    }

    /// The generator with every adapter folded into its base weights (for inference: the same
    /// module-path names as the pretrained base, so it loads into [`ConvGenerator::new`]).
    pub fn merged(&self) -> Self {
        Self {
            fc: LoraLinear::plain(self.fc.merged()),
            convs: self.convs.iter().map(|c| LoraConv2d::plain(c.merged())).collect(),
        }
    }

    /// The adapters under PEFT names (`fc.lora_A.weight`, `convs.0.lora_B.weight`, …).
    pub fn lora_tensors(&self) -> Vec<crate::lora::NamedTensor> {
        let mut t = self.fc.lora_tensors("fc");
        for (i, c) in self.convs.iter().enumerate() {
            t.extend(c.lora_tensors(&format!("convs.{i}")));
        }
        t
    }

    /// Adapters on (the aligned model) or off (the reference model).
    pub fn set_adapters(&mut self, on: bool) {
        self.fc.set_enabled(on);
        for c in &mut self.convs {
            c.set_enabled(on);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn images_in_range_and_adapters_start_at_the_base() {
        let dev = Device::flex();
        let g = ConvGenerator::new(&dev);
        let z = Tensor::<2>::random([3, LATENT], Distribution::Normal(0.0, 1.0), &dev);
        let y = one_hot(&[0, 4, 9], &dev);
        let x = g.forward(z.clone(), y.clone());
        assert_eq!(x.dims(), [3, 3, 32, 32]);
        let v = crate::svgd::to_vec(&x.clone().reshape([3, 3 * 32 * 32]));
        assert!(v.iter().all(|p| (-1.0..=1.0).contains(p)));
        let all = Targets::parse(&["all".to_string()], &ConvGenerator::layer_paths()).unwrap();
        let a = g.adapt(LoraConfig { rank: 4, alpha: 4.0 }, &all, &dev);
        let xa = a.forward(z, y);
        assert_eq!((x - xa).abs().max().into_scalar::<f32>(), 0.0, "B = 0: the adapted generator is its base");
    }

    #[test]
    fn lora_targets_parse_groups_and_refuse_unknown_names() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let layers = ConvGenerator::layer_paths();
        assert_eq!(Targets::parse(&names(&["fc", "convs"]), &layers).unwrap().0, layers);
        assert_eq!(Targets::parse(&names(&["all"]), &layers).unwrap().0, layers);
        let t = Targets::parse(&names(&["convs.3"]), &layers).unwrap();
        assert!(!t.wants("fc") && t.wants("convs.3") && !t.wants("convs.2"));
        let e = Targets::parse(&names(&["attn"]), &layers).unwrap_err();
        assert!(e.contains("\"attn\"") && e.contains("convs.3"), "{e}");
        assert!(Targets::parse(&names(&["convs.4"]), &layers).is_err());
        assert!(Targets::parse(&names(&["conv"]), &layers).is_err(), "a prefix is not a group");
    }

    #[test]
    fn upsample_repeats_each_pixel() {
        let dev = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]), &dev);
        let up = crate::svgd::to_vec(&upsample2(x).reshape([1, 16]));
        assert_eq!(up, vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    }
}
