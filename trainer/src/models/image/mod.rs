//! The class-conditional 32×32 image families (the procedural dataset of `crate::data::shapes`):
//! the one-step convolutional generator pretrained as a GAN (`gan`) and the few-step MeanFlow
//! U-Net (`meanflow`). Samples are images in `[−1, 1]`, flattened `[3, 32, 32]` per row.

pub mod flow;
pub mod flow_train;
pub mod gan;
pub mod gan_train;

pub use flow::FlowGenerator;
pub use gan::ConvGenerator;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor};

crate::models::families!(ConvGenerator, FlowGenerator);

/// The downsampling stack shared by the image encoder and the discriminator: stride-2 3×3
/// convolutions (32 → 16 → 8 → 4) through the channel counts `ch`.
pub fn downsampling_convs(ch: &[usize], device: &Device) -> Vec<Conv2d> {
    ch.windows(2)
        .map(|w| {
            Conv2dConfig::new([w[0], w[1]], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        })
        .collect()
}

/// A 3×3 convolution with padding 1 and the given stride.
pub(crate) fn conv3(i: usize, o: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
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

/// The cache key of an image base: its kind, the fixed model seed and what its training ran.
pub(crate) fn cache_key(kind: &str, cfg: &crate::config::Config, steps: usize, batch: usize) -> serde_json::Value {
    serde_json::json!({ "v": 2, "kind": kind, "seed": cfg.image.pretrain_seed, "steps": steps, "batch": batch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn upsample_repeats_each_pixel() {
        let dev = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]), &dev);
        let up = crate::tensors::to_vec(&upsample2(x).reshape([1, 16]));
        assert_eq!(up, vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    }
}
