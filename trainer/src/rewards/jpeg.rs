//! JPEG compressibility rewards (spec §9.2): the size of an image encoded as JPEG at quality 95
//! with 4:2:0 chroma subsampling, in decimal kB. `Compress` rewards small files (`−kB`),
//! `Incompress` large ones (`+kB`). Non-differentiable: FAV-B estimates its gradient (§9.1).

use super::{Identity, ImageReward, Reward};
use crate::data::shapes::{PIXELS, SIZE};
use crate::data::Condition;
use crate::tensors::{matrix, read, DeviceError};
use burn::tensor::Tensor;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

/// Which way the size is rewarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jpeg {
    /// `r = −size_kB`.
    Compress,
    /// `r = +size_kB`.
    Incompress,
}

/// `[C, H, W]` values in [−1, 1] → HWC bytes, `trunc(clamp(x/2 + 0.5, 0, 1) · 255)` (truncation,
/// not rounding, as the reference does).
pub fn to_u8_hwc(chw: &[f32], side: usize) -> Vec<u8> {
    let plane = side * side;
    let mut out = vec![0u8; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            out[3 * i + c] = ((chw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0) as u8;
        }
    }
    out
}

/// Encoded size in bytes of one `side × side` RGB image at quality 95, 4:2:0.
pub fn jpeg_bytes(chw: &[f32], side: usize) -> usize {
    let mut buf = Vec::new();
    let mut enc = Encoder::new(&mut buf, 95);
    enc.set_sampling_factor(SamplingFactor::R_4_2_0);
    enc.encode(&to_u8_hwc(chw, side), side as u16, side as u16, ColorType::Rgb)
        .expect("encoding into memory cannot fail");
    buf.len()
}

/// On pixel particles (`[n, 3·32·32]`, one image per row): a black box, so FAV-B estimates its
/// gradient.
impl Reward for Jpeg {
    fn value(&self, x: &Tensor<2>, _: Condition) -> Result<Tensor<2>, DeviceError> {
        use rayon::prelude::*;
        let n = x.dims()[0];
        let values = read(x)?.par_chunks(PIXELS).map(|img| self.reward(img)).collect();
        Ok(matrix(values, n, 1, &x.device()))
    }

    fn grad(&self, _: &Tensor<2>, _: Condition) -> Option<Tensor<2>> {
        None
    }

    fn black_box(&self) -> bool {
        true
    }
}

/// `jpeg_compress`: the pixels are the particles (φ = identity), `−kB`.
pub fn compress(_: &super::learned::RewardModel) -> ImageReward {
    ImageReward { features: std::rc::Rc::new(Identity), reward: std::rc::Rc::new(Jpeg::Compress), activation_floats: 0 }
}

/// `jpeg_incompress`: the pixels are the particles, `+kB`.
pub fn incompress(_: &super::learned::RewardModel) -> ImageReward {
    ImageReward {
        features: std::rc::Rc::new(Identity),
        reward: std::rc::Rc::new(Jpeg::Incompress),
        activation_floats: 0,
    }
}

impl Jpeg {
    /// The reward of one 32×32 image.
    pub fn reward(self, chw: &[f32]) -> f32 {
        let kb = jpeg_bytes(chw, SIZE) as f32 / 1000.0;
        match self {
            Jpeg::Compress => -kb,
            Jpeg::Incompress => kb,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_and_orders_by_detail() {
        // 0.999 → 0.9995·255 = 254.87 → 254 (truncated, not rounded to 255).
        assert_eq!(to_u8_hwc(&[0.999, -1.0, 2.0], 1), vec![254, 0, 255]);
        let flat = vec![0.2f32; 3 * SIZE * SIZE];
        let noisy: Vec<f32> = (0..3 * SIZE * SIZE).map(|i| ((i * 7919 % 211) as f32 / 105.0) - 1.0).collect();
        let (f, n) = (jpeg_bytes(&flat, SIZE), jpeg_bytes(&noisy, SIZE));
        assert!(n > 2 * f, "noise compresses worse than a flat image: {n} vs {f} bytes");
        assert_eq!(Jpeg::Compress.reward(&flat), -(f as f32) / 1000.0);
        assert_eq!(Jpeg::Incompress.reward(&noisy), n as f32 / 1000.0);
        // A valid JPEG: SOI and EOI markers.
        let mut buf = Vec::new();
        Encoder::new(&mut buf, 95).encode(&to_u8_hwc(&flat, SIZE), 32, 32, ColorType::Rgb).unwrap();
        assert_eq!(&buf[..2], &[0xFF, 0xD8]);
        assert_eq!(&buf[buf.len() - 2..], &[0xFF, 0xD9]);
    }
}
