//! Image alignment pieces: the procedural dataset, the JPEG rewards, the learned reward, the two
//! generator families (one-step GAN, few-step MeanFlow) behind one seam, and the image job.

pub mod align;
pub mod encoder;
pub mod family;
pub mod flow;
pub mod flow_pretrain;
pub mod gan;
pub mod generator;
pub mod job;
pub mod jpeg;
pub mod report;
pub mod shapes;

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::Device;

/// The downsampling stack shared by the image encoder and the discriminator: stride-2 3×3
/// convolutions (32 → 16 → 8 → 4) through the channel counts `ch`.
pub(crate) fn downsampling_convs(ch: &[usize], device: &Device) -> Vec<Conv2d> {
    ch.windows(2)
        .map(|w| {
            Conv2dConfig::new([w[0], w[1]], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        })
        .collect()
}
