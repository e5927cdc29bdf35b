//! A procedural, class-conditional 32×32 RGB dataset that needs no download: ten classes of
//! shapes and patterns, each image drawn with its own colours, size, position and a textured
//! background. Image `i` of a run is a pure function of `(seed, i)`.

use crate::noise::{rng, Stream};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;

/// Side of the square images.
pub const SIZE: usize = 32;
/// Values per image (`3 × 32 × 32`, channel-major like a tensor `[C, H, W]`).
pub const PIXELS: usize = 3 * SIZE * SIZE;

/// The classes, in label order.
pub const CLASSES: [&str; 10] =
    ["disc", "square", "triangle", "ring", "cross", "h-stripes", "v-stripes", "checker", "diamond", "two-dots"];

/// Whether the point `(u, v)` (shape frame: centre 0, radius about 1) is inside the shape of `class`.
fn inside(class: usize, u: f32, v: f32, phase: f32) -> bool {
    let r2 = u * u + v * v;
    match class {
        0 => r2 <= 1.0,
        1 => u.abs() <= 0.85 && v.abs() <= 0.85,
        // Upward triangle with its base at v = 0.8 and apex at v = −0.9.
        2 => (-0.9..=0.8).contains(&v) && u.abs() <= (v + 0.9) / 1.7 * 0.95,
        3 => (0.5..=1.0).contains(&r2),
        4 => (u.abs() <= 0.28 && v.abs() <= 0.95) || (v.abs() <= 0.28 && u.abs() <= 0.95),
        5 => u.abs() <= 1.0 && v.abs() <= 1.0 && ((v + phase) * 2.5).rem_euclid(2.0) < 1.0,
        6 => u.abs() <= 1.0 && v.abs() <= 1.0 && ((u + phase) * 2.5).rem_euclid(2.0) < 1.0,
        7 => {
            u.abs() <= 1.0
                && v.abs() <= 1.0
                && ((((u + 1.0) * 2.0).floor() + ((v + 1.0) * 2.0).floor()) as i32).rem_euclid(2) == 0
        }
        8 => u.abs() + v.abs() <= 1.0,
        9 => (u - 0.5).powi(2) + v * v <= 0.16 || (u + 0.5).powi(2) + v * v <= 0.16,
        _ => false,
    }
}

/// HSV (all in [0, 1]) to RGB.
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let c = v * s;
    let x = c * (1.0 - (h6.rem_euclid(2.0) - 1.0).abs());
    let (r, g, b) = match h6 as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

/// The "aesthetic" score a learned reward is trained to predict: warm (red–orange), saturated
/// foregrounds score high, cold or washed-out ones low; in [0, 1]. Like an aesthetic predictor
/// it is a matter of taste, not of class, so every class can score high or low.
pub fn aesthetic(hue: f32, saturation: f32) -> f32 {
    0.5 * (1.0 + (std::f32::consts::TAU * (hue - 0.05)).cos()) * saturation
}

/// Image `index` of the dataset under `seed`: its class (`index % 10`, so every class is equally
/// common) and its pixels in [−1, 1], `[C, H, W]` order.
pub fn image(seed: u64, index: u64) -> (usize, Vec<f32>) {
    let (class, px, _) = image_scored(seed, index);
    (class, px)
}

/// [`image`] with its [`aesthetic`] score.
pub fn image_scored(seed: u64, index: u64) -> (usize, Vec<f32>, f32) {
    let class = (index % CLASSES.len() as u64) as usize;
    let mut r = rng(seed, Stream::Shapes, index);
    let (hue, sat): (f32, f32) = (r.random(), r.random_range(0.55..1.0));
    let fg = hsv(hue, sat, r.random_range(0.75..1.0));
    let bg_hue: f32 = r.random();
    let bg = [hsv(bg_hue, r.random_range(0.1..0.5), r.random_range(0.1..0.35)), hsv(bg_hue + 0.1, 0.3, 0.25)];
    let scale = r.random_range(8.0..13.0f32);
    let (cx, cy) = (15.5 + r.random_range(-4.0..4.0f32), 15.5 + r.random_range(-4.0..4.0f32));
    let angle = if matches!(class, 1 | 2 | 4 | 8) { r.random_range(-0.35..0.35f32) } else { 0.0 };
    let (sin, cos) = angle.sin_cos();
    let phase: f32 = r.random();
    let grad_dir = r.random_range(0.0..std::f32::consts::TAU);
    let mut px = vec![0f32; PIXELS];
    for y in 0..SIZE {
        for x in 0..SIZE {
            // 2×2 supersampling for smooth edges.
            let mut cover = 0.0;
            for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let (dx, dy) = ((x as f32 + sx - 0.5 - cx) / scale, (y as f32 + sy - 0.5 - cy) / scale);
                let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
                cover += if inside(class, u, v, phase) { 0.25 } else { 0.0 };
            }
            // Background: a soft gradient between two dark colours plus a little grain.
            let t = 0.5 + 0.5 * ((x as f32 - 15.5) * grad_dir.cos() + (y as f32 - 15.5) * grad_dir.sin()) / 22.0;
            let grain = r.random_range(-0.03..0.03f32);
            for c in 0..3 {
                let back = bg[0][c] * (1.0 - t) + bg[1][c] * t + grain;
                let value = back * (1.0 - cover) + fg[c] * cover;
                px[c * SIZE * SIZE + y * SIZE + x] = (value.clamp(0.0, 1.0)) * 2.0 - 1.0;
            }
        }
    }
    (class, px, aesthetic(hue, sat))
}

/// Images `idx` (in parallel): labels, one `[n, 3, 32, 32]` row-major buffer, aesthetic scores.
pub fn pick(seed: u64, idx: &[u64]) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let imgs: Vec<_> = idx.par_iter().map(|&i| image_scored(seed, i)).collect();
    let mut px = Vec::with_capacity(idx.len() * PIXELS);
    let (mut labels, mut scores) = (Vec::new(), Vec::new());
    for (c, p, s) in imgs {
        labels.push(c);
        px.extend(p);
        scores.push(s);
    }
    (labels, px, scores)
}

/// Images `start..start + n` as one `[n, 3, 32, 32]` row-major buffer with their labels.
pub fn batch(seed: u64, start: u64, n: usize) -> (Vec<usize>, Vec<f32>) {
    let (labels, px, _) = pick(seed, &(start..start + n as u64).collect::<Vec<_>>());
    (labels, px)
}

/// Images `[n, 3, 32, 32]` on `device` from a flat buffer.
pub fn images(px: Vec<f32>, n: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(px, [n, 3, SIZE, SIZE]), device)
}

/// One-hot rows `[n, classes]` of `labels`.
pub fn one_hot(labels: &[usize], device: &Device) -> Tensor<2> {
    let ids: Vec<i64> = labels.iter().map(|&c| c as i64).collect();
    Tensor::<1, Int>::from_data(TensorData::new(ids, [labels.len()]), device).one_hot(CLASSES.len()).float()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_pure_functions_of_seed_and_index_and_in_range() {
        let (c, a) = image(3, 17);
        assert_eq!(c, 7);
        assert_eq!(a.len(), PIXELS);
        assert_eq!(image(3, 17).1, a, "same seed and index, same image");
        assert_ne!(image(4, 17).1, a, "another seed, another image");
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
        let (labels, flat) = batch(3, 10, 20);
        assert_eq!(labels, (10..30).map(|i| i % 10).collect::<Vec<_>>());
        assert_eq!(&flat[7 * PIXELS..8 * PIXELS], &a[..]);
    }

    /// One row per class as a PNG (left in the temp folder to look at).
    #[test]
    fn grid_of_every_class() {
        let (_, px) = batch(0, 0, 80);
        let path = std::env::temp_dir().join("fav-shapes-grid.png");
        crate::plot::image_grid(&px, SIZE, 10, 3, &path).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (10 * (32 * 3 + 2) + 2, 8 * (32 * 3 + 2) + 2));
    }

    /// A nearest-class-mean classifier on the foreground masks tells the classes apart: the
    /// classes differ in shape, not only in noise.
    #[test]
    fn classes_are_distinguishable() {
        // Luminance contrast against the image's own median, as a crude foreground mask.
        let mask = |p: &[f32]| -> Vec<f32> {
            let lum: Vec<f32> = (0..SIZE * SIZE).map(|i| p[i] + p[SIZE * SIZE + i] + p[2 * SIZE * SIZE + i]).collect();
            let mut s = lum.clone();
            s.sort_by(f32::total_cmp);
            let med = s[s.len() / 2];
            lum.iter().map(|&l| f32::from(u8::from(l > med + 0.3))).collect()
        };
        let k = CLASSES.len();
        let mut means = vec![vec![0f32; SIZE * SIZE]; k];
        let per = 40;
        for i in 0..(k * per) as u64 {
            let (c, p) = image(0, i);
            for (m, v) in means[c].iter_mut().zip(mask(&p)) {
                *m += v / per as f32;
            }
        }
        let mut right = 0;
        let tests = 200;
        for i in 0..tests as u64 {
            let (c, p) = image(1, i);
            let m = mask(&p);
            let best = (0..k)
                .min_by(|&a, &b| {
                    let d = |j: usize| means[j].iter().zip(&m).map(|(x, y)| (x - y).powi(2)).sum::<f32>();
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            right += usize::from(best == c);
        }
        // Chance is 10 %; position and size jitter blur the class means, so a template match
        // is far from perfect, but well above chance.
        assert!(right as f32 / tests as f32 > 0.4, "{right}/{tests} right");
    }
}
