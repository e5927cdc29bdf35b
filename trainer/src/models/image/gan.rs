//! The one-step, class-conditional convolutional image generator (GAN-style): noise and a class
//! → 4×4 feature map → three (nearest ×2 upsample, 3×3 conv, pixel norm, SiLU) blocks → 3×3 conv
//! → tanh, a 32×32 RGB image in [−1, 1].

use super::{conv3, pixel_norm, upsample2};
use crate::data::shapes::{one_hot, CLASSES, PIXELS, SIZE};
use crate::data::Condition;
use crate::models::Generator;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

/// Noise dimension.
pub const LATENT: usize = 32;
const WIDTH: [usize; 4] = [64, 32, 16, 16];

#[derive(Module, Debug)]
pub struct ConvGenerator {
    /// `[noise, one-hot class]` → `WIDTH[0] × 4 × 4`.
    pub fc: Linear,
    /// Upsampling blocks, then the output convolution.
    pub convs: Vec<Conv2d>,
}

impl ConvGenerator {
    pub fn new(device: &Device) -> Self {
        let mut convs: Vec<Conv2d> = WIDTH.windows(2).map(|w| conv3(w[0], w[1], 1, device)).collect();
        convs.push(conv3(WIDTH[3], 3, 1, device));
        Self { fc: LinearConfig::new(LATENT + CLASSES.len(), WIDTH[0] * 16).init(device), convs }
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
}

/// The class of an image condition, as one-hot rows.
pub(crate) fn classes(cond: Condition, n: usize, device: &Device) -> Tensor<2> {
    match cond {
        Condition::Class(c) => one_hot(&vec![c; n], device),
        other => panic!("an image generator is class-conditional, not {other:?}"),
    }
}

impl Generator for ConvGenerator {
    fn noise_dim(&self) -> usize {
        LATENT
    }

    fn sample(&self, noise: Tensor<2>, cond: Condition, _: usize, _: Option<usize>) -> Tensor<2> {
        let n = noise.dims()[0];
        let device = noise.device();
        self.forward(noise, classes(cond, n, &device)).reshape([n, PIXELS])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn images_in_range() {
        let dev = Device::flex();
        let g = ConvGenerator::new(&dev);
        let z = Tensor::<2>::random([3, LATENT], Distribution::Normal(0.0, 1.0), &dev);
        let x = g.sample(z, Condition::Class(4), 1, None);
        assert_eq!(x.dims(), [3, PIXELS]);
        assert!(crate::tensors::to_vec(&x).iter().all(|p| (-1.0..=1.0).contains(p)));
    }
}
