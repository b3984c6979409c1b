//! A convolution's input plane laid out zero-padded and split by the stride into `sh·sw` phase
//! planes: phase `(ry, rx)` holds the padded values at rows `ry, ry + sh, ...` and columns
//! `rx, rx + sw, ...`. Tap `(ky, kx)` of every output then reads phase
//! `(ky·dh % sh, kx·dw % sw)` at a fixed offset, so with the output computed at the phases' row
//! pitch (a few spare columns per row, dropped at the end) each tap reads one contiguous run
//! for a whole run of outputs: loops with no edge cases, whatever the kernel, stride, dilation
//! or padding. The padding's zeros then multiply like any input (`inf · 0` is NaN), ONNX's and
//! PyTorch's definition.

use crate::conv::Window;

/// The phase layout of one input plane of a convolution ([`Phases::new`]).
pub(super) struct Phases {
    /// Values per row of a phase plane: enough for the furthest tap plus a whole output row.
    pub pitch: usize,
    /// Rows per phase plane: enough for the furthest tap plus every output row, and one more.
    pub rows: usize,
    /// Values per phase plane (`rows · pitch`); a plane's phases take `sh·sw` times this.
    pub phase_len: usize,
    /// Per kernel tap (row-major), where its value for output `(0, 0)` lies in the phases;
    /// output `(oy, ox)` reads `oy·pitch + ox` further on.
    pub offsets: Vec<usize>,
}

impl Phases {
    /// The layout for `g`'s input planes.
    pub fn new(g: &Window) -> Phases {
        let (sh, sw) = g.opts.stride;
        let (dh, dw) = g.opts.dilation;
        let pitch = Phases::pitch_of(g);
        let rows = ((g.kh - 1) * dh / sh) + g.oh + 1;
        let phase_len = rows * pitch;
        let offsets = (0..g.kh * g.kw)
            .map(|t| {
                let (ky, kx) = (t / g.kw, t % g.kw);
                let (ry, qy) = ((ky * dh) % sh, (ky * dh) / sh);
                let (rx, qx) = ((kx * dw) % sw, (kx * dw) / sw);
                (ry * sw + rx) * phase_len + qy * pitch + qx
            })
            .collect();
        Phases {
            pitch,
            rows,
            phase_len,
            offsets,
        }
    }

    /// [`Phases::pitch`] of `g`'s layout, without building it.
    pub fn pitch_of(g: &Window) -> usize {
        ((g.kw - 1) * g.opts.dilation.1 / g.opts.stride.1) + g.ow
    }

    /// Values the phases of one input plane take (`sh·sw` phase planes).
    pub fn plane_len(&self, g: &Window) -> usize {
        g.opts.stride.0 * g.opts.stride.1 * self.phase_len
    }

    /// Input plane `xs` (`h × w`) into `dst` ([`Phases::plane_len`] values, zeros where the
    /// padding lies: the caller zeroes it, this writes the input's values only).
    pub fn fill(&self, g: &Window, xs: &[f32], dst: &mut [f32]) {
        let (sh, sw) = g.opts.stride;
        let (ph, pw) = g.opts.padding;
        // Padded value (py, px) = input (py - ph, px - pw) lands in phase (py % sh, px % sw)
        // at (py / sh, px / sw).
        for iy in 0..g.h {
            let py = iy + ph;
            let (ry, qy) = (py % sh, py / sh);
            if qy >= self.rows {
                continue;
            }
            let src = &xs[iy * g.w..][..g.w];
            for rx in 0..sw {
                // The first padded column at or after the input's first in this phase.
                let px0 = pw + (rx + sw - pw % sw) % sw;
                let row = (ry * sw + rx) * self.phase_len + qy * self.pitch;
                let dst = &mut dst[row..][..self.pitch];
                let (ix0, qx0) = (px0 - pw, px0 / sw);
                if ix0 < g.w && qx0 < self.pitch {
                    let n = (g.w - ix0).div_ceil(sw).min(self.pitch - qx0);
                    if sw == 1 {
                        dst[qx0..qx0 + n].copy_from_slice(&src[ix0..ix0 + n]);
                    } else if sw == 2 {
                        // Every other value, in pairs (a loop that vectorises), then the last.
                        let pairs = src[ix0..ix0 + 2 * (n - 1)].chunks_exact(2);
                        for (d, p) in dst[qx0..qx0 + n - 1].iter_mut().zip(pairs) {
                            *d = p[0];
                        }
                        dst[qx0 + n - 1] = src[ix0 + 2 * (n - 1)];
                    } else {
                        for (d, &v) in dst[qx0..].iter_mut().zip(src[ix0..].iter().step_by(sw)) {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}
