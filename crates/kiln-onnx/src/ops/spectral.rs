//! Fourier transforms: `DFT` and `STFT`. A real signal's one-sided forward transform (what
//! spectrogram front ends compute) is kiln's `rfft`: an FFT on the CPU, a product with the
//! coefficients on a GPU. The others (complex, two-sided, inverse) are a matrix product with
//! the transform's cosines and sines (made on the host in f64, kept between runs): one matmul
//! on the device over every signal at once, O(n²) per signal.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::{Result, Tensor};
use std::f64::consts::PI;
use std::sync::Mutex;

/// The largest transform matrix built (values): a 4,096-point complex transform is 67 M.
const MAX_MATRIX: usize = 1 << 26;

/// `DFT` (opsets 17 and 20): forward or inverse, full or one-sided (for a real input
/// forward; a one-sided inverse is the real inverse, `irfft`), with `dft_length` zero-padding
/// or truncating the signal, along `axis` (an attribute before opset 20, an input from it).
pub(super) fn dft(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let rank = x.rank();
    let c = x.shape().last().copied().unwrap_or(0);
    if rank < 2 || !(c == 1 || c == 2) {
        return Err(ctx.invalid(format!(
            "the input must end in a dimension of 1 (real) or 2 (complex), not {:?}",
            x.shape()
        )));
    }
    let axis = if ctx.opset >= 20 {
        match ctx.int_input(args, 2)? {
            Some(a) if a.data.len() == 1 => a.data[0],
            Some(a) => return Err(ctx.invalid(format!("axis {:?}", a.data))),
            None => -2,
        }
    } else {
        ctx.int("axis", 1)
    };
    // The last dimension holds the real and imaginary parts: it is not an axis to transform.
    let axis = ctx.axis(axis, rank)?;
    if axis == rank - 1 {
        return Err(ctx.invalid("the transform axis is the real/imaginary dimension"));
    }
    let (inverse, onesided) = (ctx.int("inverse", 0) != 0, ctx.int("onesided", 0) != 0);
    let n_in = x.shape()[axis];
    let length = match ctx.int_input(args, 1)? {
        Some(l) if l.data.len() == 1 && l.data[0] > 0 => l.data[0] as usize,
        Some(l) => return Err(ctx.invalid(format!("dft_length {:?}", l.data))),
        None if inverse && onesided => 2 * n_in.saturating_sub(1),
        None => n_in,
    };
    let kind = match (inverse, onesided) {
        (false, _) if onesided && c == 2 => {
            return Err(ctx.invalid("a one-sided transform of a complex input"));
        }
        (false, onesided) => Kind::Forward { onesided },
        (true, false) => Kind::Inverse,
        (true, true) => Kind::InverseReal,
    };
    Ok(vec![Value::Float(transform(ctx, x, axis, length, kind)?)])
}

/// `STFT`: the one-sided (by default) transform of each frame of `frame_length` samples, every
/// `frame_step`, each multiplied by `window` when given. Signal `[batch, length, 1 or 2]` (or
/// `[batch, length]`, real), output `[batch, frames, bins, 2]`.
pub(super) fn stft(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    // `[batch, length]` is a real signal too (onnxruntime takes it; the spec's shape has the
    // trailing 1).
    let x = match x.shape() {
        &[batch, len] => &x.reshape(&[batch, len, 1])?,
        _ => x,
    };
    let &[batch, len, c] = x.shape() else {
        return Err(ctx.invalid(format!("a signal of shape {:?}", x.shape())));
    };
    if !(c == 1 || c == 2) {
        return Err(ctx.invalid(format!("a signal of shape {:?}", x.shape())));
    }
    let scalar = |i: usize, what: &str| -> Result<Option<usize>> {
        match ctx.int_input(args, i)? {
            Some(v) if v.data.len() == 1 && v.data[0] > 0 => Ok(Some(v.data[0] as usize)),
            Some(v) => Err(ctx.invalid(format!("{what} {:?}", v.data))),
            None => Ok(None),
        }
    };
    let step = scalar(1, "frame_step")?.ok_or_else(|| ctx.invalid("no frame_step"))?;
    let window = args
        .get(2)
        .and_then(Option::as_ref)
        .map(|w| w.tensor("onnx"))
        .transpose()?;
    let frame = match (scalar(3, "frame_length")?, window) {
        (Some(f), _) => f,
        (None, Some(w)) => w.numel(),
        (None, None) => return Err(ctx.invalid("neither a window nor a frame_length")),
    };
    if let Some(w) = window
        && w.shape() != [frame]
    {
        return Err(ctx.invalid(format!(
            "a window of shape {:?} for frames of {frame}",
            w.shape()
        )));
    }
    if frame > len {
        return Err(ctx.invalid(format!("frames of {frame} from a signal of {len}")));
    }
    let onesided = ctx.int("onesided", 1) != 0;
    if onesided && c == 2 {
        return Err(ctx.invalid("a one-sided transform of a complex signal"));
    }
    let frames = (len - frame) / step + 1;
    let at = frame_starts(ctx, frames, frame, step)?;
    let framed = x
        .index_select(1, &at)?
        .reshape(&[batch, frames, frame, c])?;
    let framed = match window {
        Some(w) => framed.mul(&w.reshape(&[frame, 1])?)?,
        None => framed,
    };
    let y = transform(ctx, &framed, 2, frame, Kind::Forward { onesided })?;
    Ok(vec![Value::Float(y)])
}

/// The sample indices of `frames` frames of `frame` samples, `step` apart (`[frames·frame]`,
/// u32) on the node's device: kept for the last few shapes, as a front end frames signals of
/// one length on every call.
fn frame_starts(ctx: &Ctx, frames: usize, frame: usize, step: usize) -> Result<Tensor> {
    static KEPT: Kept<(usize, usize, usize)> = Mutex::new(Vec::new());
    kept(&KEPT, (frames, frame, step), ctx, || {
        let at: Vec<u32> = (0..frames)
            .flat_map(|f| (0..frame).map(move |t| (f * step + t) as u32))
            .collect();
        Tensor::from_vec_u32(ctx.dev, at, &[frames * frame])
    })
}

/// Tensors made once per key and device, the last few kept.
type Kept<K> = Mutex<Vec<(K, Tensor)>>;

/// The tensor `cache` holds for `key` on the node's device, else `make`'s, kept (the last 8,
/// each of at most 4 M values, 16 MiB).
fn kept<K: PartialEq>(
    cache: &Kept<K>,
    key: K,
    ctx: &Ctx,
    make: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    const KEEP: usize = 8;
    const KEEP_VALUES: usize = 4 << 20;
    let mut kept = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = kept
        .iter()
        .find(|(k, t)| *k == key && t.device().same(ctx.dev))
    {
        return Ok(t.clone());
    }
    let t = make()?;
    if t.numel() <= KEEP_VALUES {
        if kept.len() == KEEP {
            kept.remove(0);
        }
        kept.push((key, t.clone()));
    }
    Ok(t)
}

#[derive(Clone, Copy)]
enum Kind {
    /// `fft` (`rfft` when one-sided: bins `0..=n/2`).
    Forward { onesided: bool },
    /// `ifft`: complex out, divided by the length.
    Inverse,
    /// `irfft`: one-sided complex in, real out.
    InverseReal,
}

/// The transform of `x` (`[..., n, ..., c]`, `c` = 1 or 2) along `axis` at `length` points:
/// `x` laid out as rows of `n·c` values, times the `[m·c, bins·oc]` matrix of the transform's
/// coefficients (`m = min(n, length)`: a longer signal is truncated, a shorter one's missing
/// samples are zeros that need no rows; for the real inverse, the one-sided input's bins),
/// laid back out.
fn transform(ctx: &Ctx, x: &Tensor, axis: usize, length: usize, kind: Kind) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let rank = shape.len();
    let (n, c) = (shape[axis], shape[rank - 1]);
    // Input rows used: the real inverse reads bins 0..=length/2 of its one-sided input.
    let m = match kind {
        Kind::InverseReal => n.min(length / 2 + 1),
        _ => n.min(length),
    };
    let (bins, oc) = match kind {
        Kind::Forward { onesided: true } => (length / 2 + 1, 2),
        Kind::Forward { onesided: false } | Kind::Inverse => (length, 2),
        Kind::InverseReal => (length, 1),
    };
    // Copies only where they change something (a spectrogram's frames are already in order).
    let x = if m < n {
        x.narrow(axis as isize, 0, m)?
    } else {
        x.clone()
    };
    // [..., m, ..., c] → [rest, m·c] with the transform axis next to the parts.
    let mut order: Vec<usize> = (0..rank - 1).filter(|&d| d != axis).collect();
    order.extend([axis, rank - 1]);
    let identity = order.iter().enumerate().all(|(i, &d)| i == d);
    let moved = if identity { x } else { x.permute(&order)? };
    let rest: Vec<usize> = order[..rank - 2].iter().map(|&d| shape[d]).collect();
    let rows: usize = rest.iter().product();
    let y = if matches!(kind, Kind::Forward { onesided: true }) && c == 1 {
        // A real signal's one-sided transform: kiln's rfft (an FFT on the CPU).
        moved
            .reshape(&[rows, m])?
            .rfft(length)?
            .reshape(&[rows, bins * oc])?
    } else {
        if (m * c).saturating_mul(bins * oc) > MAX_MATRIX {
            return Err(ctx.unsupported(format!(
                "a {length}-point transform (its matrix would hold over {MAX_MATRIX} values)"
            )));
        }
        let mat = coefficients(ctx, (m, c, length, bins, oc), kind)?;
        moved.reshape(&[rows, m * c])?.matmul(&mat)?
    };
    let mut out_shape = rest.clone();
    out_shape.extend([bins, oc]);
    let y = y.reshape(&out_shape)?;
    // Back to the input's order, the transform axis where it was.
    if identity {
        return Ok(y);
    }
    let mut back = vec![0; rank];
    for (i, &d) in order.iter().enumerate() {
        back[d] = i;
    }
    y.permute(&back)
}

/// The transform's `[m·c, bins·oc]` coefficient matrix on the node's device: made once per
/// device and shape, then kept (a spectrogram front end runs the same transform on every
/// call, and the matrix costs more to make than to multiply by). The last few are kept, if
/// each is at most 16 MiB.
fn coefficients(
    ctx: &Ctx,
    (m, c, length, bins, oc): (usize, usize, usize, usize, usize),
    kind: Kind,
) -> Result<Tensor> {
    static KEPT: Kept<(usize, usize, usize, usize, usize, u8)> = Mutex::new(Vec::new());
    let tag = match kind {
        Kind::Forward { onesided: false } => 0,
        Kind::Forward { onesided: true } => 1,
        Kind::Inverse => 2,
        Kind::InverseReal => 3,
    };
    kept(&KEPT, (m, c, length, bins, oc, tag), ctx, || {
        make_coefficients((m, c, length, bins, oc), kind, ctx)
    })
}

/// [`coefficients`]' matrix, made.
fn make_coefficients(
    (m, c, length, bins, oc): (usize, usize, usize, usize, usize),
    kind: Kind,
    ctx: &Ctx,
) -> Result<Tensor> {
    // Rows: input sample t (real part, then imaginary part when complex); columns: output
    // bin k (real part, then imaginary part).
    let mut mat = vec![0f32; m * c * bins * oc];
    let len = length as f64;
    for t in 0..m {
        for k in 0..bins {
            let theta = 2.0 * PI * ((t * k) % length) as f64 / len;
            let (cos, sin) = (theta.cos(), theta.sin());
            // (re, im) of the output from a unit real part and a unit imaginary part.
            let (from_re, from_im): ((f64, f64), (f64, f64)) = match kind {
                Kind::Forward { .. } => ((cos, -sin), (sin, cos)),
                Kind::Inverse => ((cos / len, sin / len), (-sin / len, cos / len)),
                Kind::InverseReal => {
                    // Bin t of the one-sided input counts twice (its mirror image), except
                    // bin 0 and, for an even length, bin length/2; their imaginary parts
                    // are dropped, as numpy's irfft drops them.
                    let lone = t == 0 || (length.is_multiple_of(2) && t == length / 2);
                    let w = if lone { 1.0 } else { 2.0 } / len;
                    ((w * cos, 0.0), (if lone { 0.0 } else { -w * sin }, 0.0))
                }
            };
            for (part, (re, im)) in [from_re, from_im].into_iter().take(c).enumerate() {
                let row = (t * c + part) * bins * oc;
                mat[row + k * oc] = re as f32;
                if oc == 2 {
                    mat[row + k * oc + 1] = im as f32;
                }
            }
        }
    }
    Tensor::from_vec(ctx.dev, mat, &[m * c, bins * oc])
}
