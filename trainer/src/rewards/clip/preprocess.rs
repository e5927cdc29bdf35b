//! Spec §7's preprocessing, differentiable: pixels in [−1, 1] → clamp(x/2 + 0.5, 0, 1) → resize
//! the shorter side to the tower's size with antialiasing → centre crop to a square → per-channel
//! mean/std. The resize is linear in the pixels, so it is two matrix products (rows, then
//! columns) with the crop folded into the matrices; gradients flow through it to the generator.
//!
//! The weights are PyTorch's antialiased bilinear kernel (`F.interpolate(mode="bilinear",
//! antialias=True, align_corners=False)`, what torchvision's `Resize(224, antialias=True)` runs
//! on tensors in the paper's code): a triangle filter widened by the scale when shrinking,
//! normalised per output pixel.

use crate::tensors::matrix;
use burn::tensor::{Device, Tensor};

/// The CLIP normalisation (OpenAI's), the default when a model directory carries none.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Resampling weights `[out, input]` of PyTorch's antialiased bilinear resize from `input` to
/// `resized` samples, keeping outputs `crop_start .. crop_start + out`.
pub fn resize_weights(input: usize, resized: usize, crop_start: usize, out: usize) -> Vec<f32> {
    let scale = input as f64 / resized as f64;
    let (support, invscale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    let mut w = vec![0.0f32; out * input];
    for o in 0..out {
        let i = o + crop_start;
        let center = scale * (i as f64 + 0.5);
        // C++ truncation toward zero, as PyTorch's `static_cast<int64_t>`.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
        let taps: Vec<f64> =
            (xmin..xmax).map(|j| (1.0 - ((j as f64 - center + 0.5) * invscale).abs()).max(0.0)).collect();
        let total: f64 = taps.iter().sum();
        for (j, t) in (xmin..xmax).zip(taps) {
            w[o * input + j] = if total != 0.0 { (t / total) as f32 } else { 0.0 };
        }
    }
    w
}

/// The resized size of a side (torchvision: the shorter side becomes `size`, the longer
/// `int(size · long / short)`), and where the centred crop of `size` starts in it.
fn resized_and_crop(side: usize, other: usize, size: usize) -> (usize, usize) {
    let resized = if side <= other { size } else { (size as f64 * side as f64 / other as f64) as usize };
    (resized, ((resized - size) as f64 / 2.0).round() as usize)
}

/// The preprocessing of one tower: input image size, output size, normalisation.
#[derive(Clone, Debug)]
pub struct Preprocess {
    pub size: usize,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl Preprocess {
    /// `[n, 3, h, w]` pixels in [−1, 1] → `[n, 3, size, size]` normalised tower input.
    pub fn apply(&self, pixels: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = pixels.dims();
        let device: Device = pixels.device();
        let s = self.size;
        // Clamped by masks, not `clamp`: PyTorch's clamp passes no gradient at the bounds
        // themselves (pixels of 0 and 255 are common), burn's passes it.
        let x = pixels.mul_scalar(0.5).add_scalar(0.5);
        let x = x.clone().mask_fill(x.clone().lower_equal_elem(0.0), 0.0);
        let x = x.clone().mask_fill(x.greater_equal_elem(1.0), 1.0);
        let x = if (h, w) == (s, s) {
            x
        } else {
            let (rh, top) = resized_and_crop(h, w, s);
            let (rw, left) = resized_and_crop(w, h, s);
            let rows = matrix(resize_weights(h, rh, top, s), s, h, &device); // [s, h]
            let cols = matrix(resize_weights(w, rw, left, s), s, w, &device); // [s, w]
                                                                              // Columns: [n·c·h, w] @ [w, s]; rows: [n·c·s, h] @ [h, s] after swapping the axes.
            let x = x.reshape([n * c * h, w]).matmul(cols.transpose()).reshape([n * c, h, s]);
            let x = x.swap_dims(1, 2).reshape([n * c * s, h]).matmul(rows.transpose());
            x.reshape([n * c, s, s]).swap_dims(1, 2).reshape([n, c, s, s])
        };
        let stat = |v: [f64; 3]| {
            Tensor::<1>::from_floats([v[0] as f32, v[1] as f32, v[2] as f32], &device).reshape([1, 3, 1, 1])
        };
        (x - stat(self.mean)) / stat(self.std)
    }
}
