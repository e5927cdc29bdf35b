//! Side-by-side density pictures of 2-D sample sets (base | aligned | target), as PNG.
//! Drawn directly with `image`: no font or system library needed.

use image::{Rgb, RgbImage};
use std::path::Path;

const PANEL: u32 = 360;
const GAP: u32 = 8;
const HEADER: u32 = 30;
const GLYPH_SCALE: u32 = 3;

/// 5×7 capitals for panel titles (rows top to bottom, 5 bits each, MSB left).
fn glyph(c: char) -> [u8; 7] {
    match c {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'N' => [0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x11],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        _ => [0; 7],
    }
}

fn draw_text(img: &mut RgbImage, text: &str, x_centre: u32, y: u32) {
    let w = text.len() as u32 * 6 * GLYPH_SCALE;
    let x0 = x_centre.saturating_sub(w / 2);
    for (i, c) in text.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..GLYPH_SCALE {
                        for dx in 0..GLYPH_SCALE {
                            let px = x0 + (i as u32 * 6 + col) * GLYPH_SCALE + dx;
                            let py = y + row as u32 * GLYPH_SCALE + dy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, Rgb([30, 30, 30]));
                            }
                        }
                    }
                }
            }
        }
    }
}
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

/// One titled panel per set (row-major 2-D points), each a log-scaled 2-D histogram over
/// `[−4.5, 4.5]²`, with the eight cluster centres marked. Titles use the letters A B D E G I L
/// N R S T.
pub fn density_panels(sets: &[(&str, &[f32])], centres: &[[f64; 2]], path: &Path) -> Result<(), String> {
    let w = sets.len() as u32 * PANEL + (sets.len() as u32 + 1) * GAP;
    let mut img = RgbImage::from_pixel(w, HEADER + PANEL + 2 * GAP, Rgb([255, 255, 255]));
    for (p, (title, _)) in sets.iter().enumerate() {
        draw_text(&mut img, title, GAP + p as u32 * (PANEL + GAP) + PANEL / 2, GAP);
    }
    let bins = PANEL / 3;
    let to_bin = |v: f32| ((v + EXTENT) / (2.0 * EXTENT) * bins as f32).floor() as i64;
    for (p, (_, pts)) in sets.iter().enumerate() {
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
                img.put_pixel(x0 + px, HEADER + GAP + py, colour(v));
            }
        }
        for c in centres {
            let px = ((c[0] as f32 + EXTENT) / (2.0 * EXTENT) * PANEL as f32) as i64;
            let py = PANEL as i64 - 1 - ((c[1] as f32 + EXTENT) / (2.0 * EXTENT) * PANEL as f32) as i64;
            for d in -5i64..=5 {
                for (dx, dy) in [(d, 0), (0, d)] {
                    let (x, y) = (px + dx, py + dy);
                    if (0..PANEL as i64).contains(&x) && (0..PANEL as i64).contains(&y) {
                        img.put_pixel(x0 + x as u32, HEADER + GAP + y as u32, Rgb([80, 200, 255]));
                    }
                }
            }
        }
    }
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
