//! Pictures as PNG: side-by-side densities of 2-D sample sets (base | aligned | target) and the
//! training curves (loss, reward, KL, MMD² over steps). Drawn directly with `image` and built-in
//! 5×7 glyphs: no font or system library needed.

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
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        _ => [0; 7],
    }
}

fn draw_text(img: &mut RgbImage, text: &str, x_centre: u32, y: u32) {
    draw_text_scaled(img, text, x_centre, y, GLYPH_SCALE);
}

fn draw_text_scaled(img: &mut RgbImage, text: &str, x_centre: u32, y: u32, scale: u32) {
    draw_text_coloured(img, text, x_centre, y, scale, Rgb([30, 30, 30]));
}

/// `text` centred on `x_centre` with its top at `y`, each glyph pixel `scale` pixels wide.
fn draw_text_coloured(img: &mut RgbImage, text: &str, x_centre: u32, y: u32, scale: u32, ink: Rgb<u8>) {
    let w = text.len() as u32 * 6 * scale;
    let x0 = x_centre.saturating_sub(w / 2);
    for (i, c) in text.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x0 + (i as u32 * 6 + col) * scale + dx;
                            let py = y + row as u32 * scale + dy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, ink);
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

const CURVE_W: u32 = 420;
const CURVE_H: u32 = 260;
/// Margin around a curve's plot area: room for the title above and the labels around.
const MARGIN: u32 = 36;

/// A compact label for an axis value (`0.0123`, `1.2E-4`, `1500`).
fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (0.01..100_000.0).contains(&a) {
        // Three significant digits.
        let digits = (2 - a.log10().floor() as i32).clamp(0, 4) as usize;
        return format!("{v:.digits$}");
    }
    format!("{v:.1E}")
}

/// Training curves, one titled panel per series: `(title, [(step, value)])`, values over steps
/// with the axis ranges written at the ends. Titles and labels use digits, `. -` and the
/// letters A–Y except J, Q.
pub fn curves(series: &[(&str, Vec<(f64, f64)>)], path: &Path) -> Result<(), String> {
    let cols = series.len().clamp(1, 2) as u32;
    let rows = (series.len() as u32).div_ceil(cols);
    let mut img = RgbImage::from_pixel(cols * CURVE_W, rows.max(1) * CURVE_H, Rgb([255, 255, 255]));
    for (i, (title, pts)) in series.iter().enumerate() {
        let origin = ((i as u32 % cols) * CURVE_W, (i as u32 / cols) * CURVE_H);
        panel(&mut img, origin, title, &[(BLUE, pts.clone())]);
    }
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
/// A series of points and the colour it is drawn in.
type Coloured = (Rgb<u8>, Vec<(f64, f64)>);
/// Colours of [`xy`] series, in order.
pub const PALETTE: [Rgb<u8>; 4] = [BLUE, Rgb([255, 127, 14]), Rgb([44, 160, 44]), Rgb([214, 39, 40])];

/// One panel of several series `(label, [(x, y)])` drawn as lines in [`PALETTE`] order, the
/// labels in their colours under the title (e.g. reward against diversity for several methods).
pub fn xy(title: &str, series: &[(&str, Vec<(f64, f64)>)], path: &Path) -> Result<(), String> {
    let legend = 14 * series.len() as u32;
    let mut img = RgbImage::from_pixel(2 * CURVE_W, 2 * CURVE_H + legend, Rgb([255, 255, 255]));
    let coloured: Vec<_> =
        series.iter().enumerate().map(|(i, (_, p))| (PALETTE[i % PALETTE.len()], p.clone())).collect();
    panel_sized(&mut img, (0, legend), (2 * CURVE_W, 2 * CURVE_H), title, &coloured);
    for (i, (label, _)) in series.iter().enumerate() {
        draw_text_coloured(&mut img, label, CURVE_W, 4 + 14 * i as u32, 2, PALETTE[i % PALETTE.len()]);
    }
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn panel(img: &mut RgbImage, origin: (u32, u32), title: &str, series: &[Coloured]) {
    panel_sized(img, origin, (CURVE_W, CURVE_H), title, series)
}

/// A framed panel at `origin` of `size` with every series on shared axes.
fn panel_sized(img: &mut RgbImage, (ox, oy): (u32, u32), (pw, ph): (u32, u32), title: &str, series: &[Coloured]) {
    draw_text_scaled(img, title, ox + pw / 2, oy + 8, 2);
    let (left, top) = (ox + MARGIN + 24, oy + MARGIN);
    let (w, h) = (pw - 2 * MARGIN - 24, ph - 2 * MARGIN);
    for x in left..=left + w {
        img.put_pixel(x, top, Rgb([200, 200, 200]));
        img.put_pixel(x, top + h, Rgb([120, 120, 120]));
    }
    for y in top..=top + h {
        img.put_pixel(left, y, Rgb([120, 120, 120]));
        img.put_pixel(left + w, y, Rgb([200, 200, 200]));
    }
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, pts)| pts.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
        .collect();
    let all: Vec<(f64, f64)> = finite.iter().flatten().copied().collect();
    if all.is_empty() {
        return;
    }
    let span = |it: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = it.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5 * lo.abs().max(1e-12), hi + 0.5 * hi.abs().max(1e-12))
        }
    };
    let (x0, x1) = span(&mut all.iter().map(|p| p.0));
    let (y0, y1) = span(&mut all.iter().map(|p| p.1));
    draw_text_scaled(img, &label(y1), ox + MARGIN - 2, top - 4, 1);
    draw_text_scaled(img, &label(y0), ox + MARGIN - 2, top + h - 4, 1);
    draw_text_scaled(img, &label(x0), left, top + h + 6, 1);
    draw_text_scaled(img, &label(x1), left + w, top + h + 6, 1);
    let at = |(x, y): (f64, f64)| {
        let px = left as f64 + (x - x0) / (x1 - x0) * w as f64;
        let py = (top + h) as f64 - (y - y0) / (y1 - y0) * h as f64;
        (px.round() as i64, py.round() as i64)
    };
    for ((colour, _), pts) in series.iter().zip(&finite) {
        for pair in pts.windows(2) {
            line(img, at(pair[0]), at(pair[1]), *colour);
        }
        for &p in pts {
            let (px, py) = at(p);
            for (dx, dy) in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)] {
                put(img, px + dx, py + dy, *colour);
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if (0..img.width() as i64).contains(&x) && (0..img.height() as i64).contains(&y) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Bresenham's line from `a` to `b`.
fn line(img: &mut RgbImage, a: (i64, i64), b: (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((b.0 - a.0).abs(), -(b.1 - a.1).abs());
    let (sx, sy) = (if a.0 < b.0 { 1 } else { -1 }, if a.1 < b.1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (a.0, a.1, dx + dy);
    loop {
        put(img, x, y, c);
        if (x, y) == b {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// One RGB image (`[3, h, w]` values in [−1, 1]) as a PNG, quantised as diffusers' image
/// processor does (`round(clamp(x/2 + 0.5, 0, 1) · 255)`).
pub fn write_rgb_png(path: &Path, chw: &[f32], h: usize, w: usize) -> Result<(), String> {
    let q = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([q(chw[i]), q(chw[h * w + i]), q(chw[2 * h * w + i])])
    });
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A grid of RGB images (`[C, H, W]` values in [−1, 1], `side × side` each, `n` of them in
/// `pixels`), `cols` per row, each pixel drawn `zoom × zoom`, with a 2-pixel white gutter.
pub fn image_grid(pixels: &[f32], side: usize, cols: usize, zoom: u32, path: &Path) -> Result<(), String> {
    let per = 3 * side * side;
    let n = pixels.len() / per;
    let rows = n.div_ceil(cols.max(1));
    let cell = side as u32 * zoom + 2;
    let mut img = RgbImage::from_pixel(cols as u32 * cell + 2, rows as u32 * cell + 2, Rgb([255, 255, 255]));
    for (k, im) in pixels.chunks_exact(per).enumerate() {
        let (ox, oy) = (2 + (k % cols) as u32 * cell, 2 + (k / cols) as u32 * cell);
        for y in 0..side {
            for x in 0..side {
                let c = |ch: usize| ((im[ch * side * side + y * side + x] / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0) as u8;
                let px = Rgb([c(0), c(1), c(2)]);
                for dy in 0..zoom {
                    for dx in 0..zoom {
                        img.put_pixel(ox + x as u32 * zoom + dx, oy + y as u32 * zoom + dy, px);
                    }
                }
            }
        }
    }
    img.save(path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_and_use_only_drawable_characters() {
        for (v, want) in [(0.0, "0"), (0.0123, "0.0123"), (1500.0, "1500"), (0.6789, "0.679"), (1.2e-4, "1.2E-4")] {
            assert_eq!(label(v), want);
        }
        for v in [3.3e-5, -2.5, 123456.0, 0.01] {
            assert!(label(v).chars().all(|c| glyph(c) != [0; 7]), "{v} → {}", label(v));
        }
    }

    #[test]
    fn xy_draws_every_series_in_its_colour() {
        let path = std::env::temp_dir().join(format!("fav-xy-{}.png", std::process::id()));
        let a: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        let b: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 9.0 - i as f64)).collect();
        xy("REWARD", &[("FAV", a), ("DRAFT", b)], &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        std::fs::remove_file(&path).unwrap();
        for c in &PALETTE[..2] {
            assert!(img.pixels().filter(|p| *p == c).count() > 100, "series drawn in {c:?}");
        }
        assert!(!img.pixels().any(|p| *p == PALETTE[2]), "no third series");
    }

    #[test]
    fn curves_draw_each_series_in_its_panel() {
        let path = std::env::temp_dir().join(format!("fav-curves-{}.png", std::process::id()));
        let rising: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 10.0, i as f64)).collect();
        curves(&[("LOSS", rising.clone()), ("REWARD", rising)], &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((img.width(), img.height()), (2 * CURVE_W, CURVE_H));
        // A rising series runs from the bottom-left to the top-right corner of each plot area.
        let blue = Rgb([31, 119, 180]);
        for panel in 0..2 {
            let left = panel * CURVE_W + MARGIN + 24;
            assert_eq!(*img.get_pixel(left, CURVE_H - MARGIN), blue);
            assert_eq!(*img.get_pixel(left + CURVE_W - 2 * MARGIN - 24, MARGIN), blue);
        }
    }
}
