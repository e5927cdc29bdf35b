//! Side-by-side density pictures of 2-D sample sets (base | aligned | target), as PNG.
//! Drawn directly with `image`: no font or system library needed.

use image::{Rgb, RgbImage};
use std::path::Path;

const PANEL: u32 = 360;
const GAP: u32 = 8;
const EXTENT: f32 = 4.5;

/// Perceptually ordered dark-to-bright ramp (an inferno-like map).
fn colour(v: f32) -> Rgb<u8> {
    const STOPS: [[f32; 3]; 5] =
        [[0.0, 0.0, 4.0], [87.0, 16.0, 110.0], [188.0, 55.0, 84.0], [249.0, 142.0, 9.0], [252.0, 255.0, 164.0]];
    let v = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (v.floor() as usize).min(STOPS.len() - 2);
    let f = v - i as f32;
    let c = |k: usize| (STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f) as u8;
    Rgb([c(0), c(1), c(2)])
}

/// One panel per set (row-major 2-D points), each a log-scaled 2-D histogram over
/// `[−4.5, 4.5]²`, with the eight cluster centres marked.
pub fn density_panels(sets: &[&[f32]], centres: &[[f64; 2]], path: &Path) -> Result<(), String> {
    let w = sets.len() as u32 * PANEL + (sets.len() as u32 + 1) * GAP;
    let mut img = RgbImage::from_pixel(w, PANEL + 2 * GAP, Rgb([255, 255, 255]));
    let bins = PANEL / 3;
    let to_bin = |v: f32| ((v + EXTENT) / (2.0 * EXTENT) * bins as f32).floor() as i64;
    for (p, pts) in sets.iter().enumerate() {
        let mut h = vec![0u32; (bins * bins) as usize];
        for q in pts.chunks_exact(2) {
            let (bx, by) = (to_bin(q[0]), to_bin(q[1]));
            if (0..bins as i64).contains(&bx) && (0..bins as i64).contains(&by) {
                h[(by as u32 * bins + bx as u32) as usize] += 1;
            }
        }
        let max = h.iter().copied().max().unwrap_or(1).max(1) as f32;
        let x0 = GAP + p as u32 * (PANEL + GAP);
        for py in 0..PANEL {
            for px in 0..PANEL {
                let (bx, by) = (px * bins / PANEL, (PANEL - 1 - py) * bins / PANEL);
                let c = h[(by * bins + bx) as usize] as f32;
                let v = if c == 0.0 { 0.0 } else { 0.15 + 0.85 * (1.0 + c).ln() / (1.0 + max).ln() };
                img.put_pixel(x0 + px, GAP + py, colour(v));
            }
        }
        for c in centres {
            let px = ((c[0] as f32 + EXTENT) / (2.0 * EXTENT) * PANEL as f32) as i64;
            let py = PANEL as i64 - 1 - ((c[1] as f32 + EXTENT) / (2.0 * EXTENT) * PANEL as f32) as i64;
            for d in -5i64..=5 {
                for (dx, dy) in [(d, 0), (0, d)] {
                    let (x, y) = (px + dx, py + dy);
                    if (0..PANEL as i64).contains(&x) && (0..PANEL as i64).contains(&y) {
                        img.put_pixel(x0 + x as u32, GAP + y as u32, Rgb([80, 200, 255]));
                    }
                }
            }
        }
    }
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
