//! A loss curve as a PNG: per-batch losses (light) and per-epoch means (dark), with a y grid
//! labelled by value and x ticks at epoch boundaries. Drawn pixel by pixel with a tiny built-in
//! font, so the only dependency is the `png` encoder.

use std::path::Path;

const W: usize = 720;
const H: usize = 420;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 40;
const BOTTOM: usize = 50;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// A line of `thick` pixels (Bresenham, thickened as a square brush).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..thick {
                for oy in 0..thick {
                    self.set(x + ox, y + oy, c);
                }
            }
            if x == x1 && y == y1 {
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

    /// Text in a 3×5 font scaled by `s`.
    fn text(&mut self, x: i64, y: i64, s: i64, text: &str, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let bits = glyph(ch);
            for row in 0..5 {
                for col in 0..3 {
                    if bits >> (14 - (row * 3 + col)) & 1 == 1 {
                        for a in 0..s {
                            for b in 0..s {
                                self.set(x + (k as i64 * 4 + col) * s + a, y + row * s + b, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// 3×5 glyphs, row-major, 15 bits.
fn glyph(c: char) -> u16 {
    let rows: [u8; 5] = match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'L' => [4, 4, 4, 4, 7],
        'O' => [7, 5, 5, 5, 7],
        'S' => [3, 4, 2, 1, 6],
        'E' => [7, 4, 7, 4, 7],
        'P' => [7, 5, 7, 4, 4],
        'C' => [7, 4, 4, 4, 7],
        'H' => [5, 5, 7, 5, 5],
        _ => [0; 5],
    };
    rows.iter().fold(0u16, |acc, &r| (acc << 3) | u16::from(r))
}

/// Writes the curve of `losses` (one per batch, `per_epoch` batches an epoch) to `path`.
pub fn loss_png(path: &Path, losses: &[f32], per_epoch: usize) -> std::io::Result<()> {
    let mut cv = Canvas::new();
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let hi = losses.iter().cloned().fold(0.0f32, f32::max).max(1e-6) as f64;
    let n = losses.len().max(2);
    let px = |i: f64| LEFT as i64 + (i / (n - 1) as f64 * pw) as i64;
    let py = |v: f64| TOP as i64 + ((1.0 - (v / hi).clamp(0.0, 1.0)) * ph) as i64;
    let (grid, axis, ink) = ([225, 225, 225], [40, 40, 40], [60, 60, 60]);
    for k in 0..=5 {
        let v = hi * k as f64 / 5.0;
        cv.line((LEFT as i64, py(v)), ((W - RIGHT) as i64, py(v)), grid, 1);
        cv.text(8, py(v) - 5, 2, &format!("{v:.2}"), ink);
    }
    let epochs = n.div_ceil(per_epoch.max(1));
    let every = epochs.div_ceil(10).max(1);
    for e in (0..=epochs).step_by(every) {
        let x = px((e * per_epoch).min(n - 1) as f64);
        cv.line(
            (x, (H - BOTTOM) as i64),
            (x, (H - BOTTOM + 6) as i64),
            axis,
            1,
        );
        cv.text(x - 4, (H - BOTTOM + 12) as i64, 2, &e.to_string(), ink);
    }
    cv.line(
        (LEFT as i64, TOP as i64),
        (LEFT as i64, (H - BOTTOM) as i64),
        axis,
        2,
    );
    cv.line(
        (LEFT as i64, (H - BOTTOM) as i64),
        ((W - RIGHT) as i64, (H - BOTTOM) as i64),
        axis,
        2,
    );
    cv.text(LEFT as i64, 12, 3, "LOSS", ink);
    cv.text((W / 2) as i64 - 30, (H - 18) as i64, 2, "EPOCH", ink);
    for (i, w) in losses.windows(2).enumerate() {
        let a = (px(i as f64), py(f64::from(w[0])));
        let b = (px((i + 1) as f64), py(f64::from(w[1])));
        cv.line(a, b, [150, 190, 235], 1);
    }
    let means: Vec<(f64, f64)> = losses
        .chunks(per_epoch.max(1))
        .enumerate()
        .map(|(e, c)| {
            let mid = e * per_epoch.max(1) + c.len() / 2;
            (
                mid as f64,
                c.iter().map(|&v| f64::from(v)).sum::<f64>() / c.len() as f64,
            )
        })
        .collect();
    for w in means.windows(2) {
        cv.line(
            (px(w[0].0), py(w[0].1)),
            (px(w[1].0), py(w[1].1)),
            [180, 30, 30],
            3,
        );
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(&cv.px)
        .map_err(std::io::Error::other)?;
    Ok(())
}
