//! ONNX `Resize` (opsets 11–19): nearest, linear and cubic interpolation, separable by axis.
//! For each resized axis the host computes, per output position, the source taps and their
//! weights; the device gathers each tap along the axis and sums the weighted gathers.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;
use kiln::Tensor;

/// The taps of one output position: (source index, weight).
type Taps = Vec<(usize, f64)>;

/// The taps of a downsampling antialiased filter (ONNX's reference): the linear (tent) or
/// cubic kernel stretched by `1 / scale`, so that every source value within its support
/// contributes, the weights normalised to sum to 1 (and again after `exclude_outside` drops
/// the taps outside the input). Taps run from `ceil(src) - 1 + start`, the source positions
/// nearest `src`, preferring the lower.
fn antialiased(
    src: f64,
    scale: f64,
    cubic: bool,
    kernel: &dyn Fn(f64) -> f64,
    exclude: bool,
    last: i64,
) -> Taps {
    let reach = if cubic { 2.0 } else { 1.0 };
    let start = (-reach / scale).floor() as i64 + 1;
    let count = 2 - 2 * start;
    let base = src.ceil() as i64 - 1;
    let ratio = src - base as f64;
    let weight = |d: f64| {
        if cubic {
            kernel(d)
        } else {
            (1.0 - d.abs()).clamp(0.0, 1.0)
        }
    };
    let mut taps: Vec<(i64, f64)> = (start..start + count)
        .map(|off| (base + off, weight((off as f64 - ratio) * scale)))
        .collect();
    let sum: f64 = taps.iter().map(|t| t.1).sum();
    taps.iter_mut().for_each(|t| t.1 /= sum);
    if exclude {
        taps.iter_mut()
            .filter(|t| t.0 < 0 || t.0 > last)
            .for_each(|t| t.1 = 0.0);
        let sum: f64 = taps.iter().map(|t| t.1).sum();
        taps.iter_mut().for_each(|t| t.1 /= sum);
    }
    taps.into_iter()
        .map(|(i, w)| (i.clamp(0, last.max(0)) as usize, w))
        .collect()
}

/// Source taps along one axis of `len_in` values resized to `len_out` at `scale` (`roi`: the
/// crop of `tf_crop_and_resize`), and whether each output position lies inside the input
/// (false only for crops reaching outside, which take the extrapolation value).
fn axis_taps(
    ctx: &Ctx,
    len_in: usize,
    len_out: usize,
    scale: f64,
    roi: (f64, f64),
) -> Result<(Vec<Taps>, Vec<bool>)> {
    let coord = ctx.string("coordinate_transformation_mode", "half_pixel");
    let mode = ctx.string("mode", "nearest");
    let nearest = ctx.string("nearest_mode", "round_prefer_floor");
    let a = f64::from(ctx.float("cubic_coeff_a", -0.75));
    let exclude = ctx.int("exclude_outside", 0) != 0;
    let antialias = ctx.int("antialias", 0) != 0 && scale < 1.0;
    let last = len_in as i64 - 1;
    // The resized length before rounding, as ONNX's coordinate formulas use it.
    let resized = len_in as f64 * scale;
    let mut inside = vec![true; len_out];
    let taps = (0..len_out)
        .map(|o| {
            let x = o as f64;
            let src = match coord.as_str() {
                "half_pixel" => (x + 0.5) / scale - 0.5,
                "half_pixel_symmetric" => {
                    let adjustment = len_out as f64 / resized;
                    let offset = len_in as f64 / 2.0 * (1.0 - adjustment);
                    offset + (x + 0.5) / scale - 0.5
                }
                "pytorch_half_pixel" if len_out > 1 => (x + 0.5) / scale - 0.5,
                "pytorch_half_pixel" => 0.0,
                "align_corners" if resized > 1.0 => x * (len_in as f64 - 1.0) / (resized - 1.0),
                "align_corners" => 0.0,
                "asymmetric" => x / scale,
                "tf_half_pixel_for_nn" => (x + 0.5) / scale,
                "tf_crop_and_resize" => {
                    let (s, e) = roi;
                    let span = len_in as f64 - 1.0;
                    let v = if len_out > 1 {
                        s * span + x * (e - s) * span / (len_out as f64 - 1.0)
                    } else {
                        0.5 * (s + e) * span
                    };
                    if v < 0.0 || v > span {
                        inside[o] = false;
                    }
                    v
                }
                other => {
                    return Err(ctx.unsupported(format!("coordinate_transformation_mode {other}")));
                }
            };
            let clamp = |i: i64| i.clamp(0, last.max(0)) as usize;
            let cubic = |d: f64| {
                let d = d.abs();
                if d <= 1.0 {
                    ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
                } else if d < 2.0 {
                    ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
                } else {
                    0.0
                }
            };
            if antialias {
                return Ok(antialiased(
                    src,
                    scale,
                    mode == "cubic",
                    &cubic,
                    exclude,
                    last,
                ));
            }
            Ok(match mode.as_str() {
                "nearest" => {
                    let frac = src - src.floor();
                    let i = match nearest.as_str() {
                        "round_prefer_floor" if frac == 0.5 => src.floor(),
                        "round_prefer_ceil" if frac == 0.5 => src.ceil(),
                        "round_prefer_floor" | "round_prefer_ceil" => src.round(),
                        "floor" => src.floor(),
                        "ceil" => src.ceil(),
                        other => return Err(ctx.unsupported(format!("nearest_mode {other}"))),
                    };
                    vec![(clamp(i as i64), 1.0)]
                }
                "linear" => {
                    let s = src.clamp(0.0, last.max(0) as f64);
                    let f = s.floor();
                    let w = s - f;
                    vec![(clamp(f as i64), 1.0 - w), (clamp(f as i64 + 1), w)]
                }
                "cubic" => {
                    let f = src.floor();
                    let t = src - f;
                    let mut taps: Taps = (-1..=2)
                        .map(|j| {
                            let i = f as i64 + j;
                            let w = cubic(t - j as f64);
                            let outside = i < 0 || i > last;
                            (clamp(i), if exclude && outside { 0.0 } else { w })
                        })
                        .collect();
                    if exclude {
                        let sum: f64 = taps.iter().map(|t| t.1).sum();
                        taps.iter_mut().for_each(|t| t.1 /= sum);
                    }
                    taps
                }
                other => return Err(ctx.unsupported(format!("mode {other}"))),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((taps, inside))
}

pub(super) fn resize(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    if ctx.int("antialias", 0) != 0 && ctx.string("mode", "nearest") == "nearest" {
        return Err(ctx.invalid("antialias with mode nearest"));
    }
    let input = ctx.input(args, 0)?;
    let x = input.float_on(ctx.dev)?;
    let r = x.rank();
    let axes: Vec<usize> = match ctx.ints("axes") {
        Some(a) => a.iter().map(|&v| ctx.axis(v, r)).collect::<Result<_>>()?,
        None => (0..r).collect(),
    };
    let present = |i: usize| {
        args.get(i)
            .and_then(Option::as_ref)
            .filter(|v| !v.shape().contains(&0))
    };
    let (sizes, scales) = (present(3), present(2));
    let mut out: Vec<usize> = x.shape().to_vec();
    let mut scale = vec![1.0f64; r];
    match (sizes, scales) {
        (Some(s), _) => {
            let s = s.ints()?.data;
            if s.len() != axes.len() {
                return Err(ctx.invalid(format!("{} sizes for {} axes", s.len(), axes.len())));
            }
            let policy = ctx.string("keep_aspect_ratio_policy", "stretch");
            let ratios: Vec<f64> = axes
                .iter()
                .zip(&s)
                .map(|(&a, &n)| n as f64 / x.shape()[a] as f64)
                .collect();
            let common = match policy.as_str() {
                "stretch" => None,
                "not_larger" => Some(ratios.iter().copied().fold(f64::INFINITY, f64::min)),
                "not_smaller" => Some(ratios.iter().copied().fold(0.0, f64::max)),
                other => return Err(ctx.unsupported(format!("keep_aspect_ratio_policy {other}"))),
            };
            for (k, &a) in axes.iter().enumerate() {
                match common {
                    None => {
                        out[a] = s[k].max(0) as usize;
                        scale[a] = ratios[k];
                    }
                    Some(c) => {
                        out[a] = (x.shape()[a] as f64 * c).round() as usize;
                        scale[a] = c;
                    }
                }
            }
        }
        (None, Some(sc)) => {
            let sc = sc.to_f64()?;
            if sc.len() != axes.len() {
                return Err(ctx.invalid(format!("{} scales for {} axes", sc.len(), axes.len())));
            }
            for (k, &a) in axes.iter().enumerate() {
                out[a] = (x.shape()[a] as f64 * sc[k]).floor() as usize;
                scale[a] = sc[k];
            }
        }
        (None, None) => return Err(ctx.invalid("neither scales nor sizes")),
    }
    let crop = ctx.string("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize";
    let roi = match present(1) {
        Some(v) if crop => v.to_f64()?,
        _ => Vec::new(),
    };
    if crop && roi.len() != 2 * axes.len() {
        return Err(ctx.invalid(format!(
            "a roi of {} values for {} axes",
            roi.len(),
            axes.len()
        )));
    }
    let mut y = x;
    for (k, &a) in axes.iter().enumerate() {
        let (len_in, len_out) = (y.shape()[a], out[a]);
        if len_in == len_out && scale[a] == 1.0 && !crop {
            continue;
        }
        let bounds = if crop {
            (roi[k], roi[k + axes.len()])
        } else {
            (0.0, 1.0)
        };
        let (taps, inside) = axis_taps(ctx, len_in, len_out, scale[a], bounds)?;
        let width = taps.iter().map(Vec::len).max().unwrap_or(1);
        let mut acc: Option<Tensor> = None;
        for t in 0..width {
            let ids: Vec<u32> = taps.iter().map(|p| p[t].0 as u32).collect();
            let ids = Tensor::from_vec_u32(ctx.dev, ids, &[len_out])?;
            let picked = y.index_select(a as isize, &ids)?;
            let term = if width == 1 {
                picked
            } else {
                let mut wshape = vec![1; r];
                wshape[a] = len_out;
                let w: Vec<f32> = taps.iter().map(|p| p[t].1 as f32).collect();
                picked.mul(&Tensor::from_vec(ctx.dev, w, &wshape)?)?
            };
            acc = Some(match acc {
                Some(s) => s.add(&term)?,
                None => term,
            });
        }
        y = acc.ok_or_else(|| ctx.invalid("no taps"))?;
        if inside.iter().any(|&i| !i) {
            let mut mshape = vec![1; r];
            mshape[a] = len_out;
            let mask: Vec<f32> = inside.iter().map(|&i| f32::from(u8::from(i))).collect();
            let mask = Tensor::from_vec(ctx.dev, mask, &mshape)?;
            let fill = Tensor::full(ctx.dev, &[1], ctx.float("extrapolation_value", 0.0))?;
            y = Tensor::where_cond(&mask, &y, &fill)?;
        }
    }
    Ok(vec![match input {
        Value::Int(i) => {
            let mut v = Value::Float(y).ints()?;
            v.elem = i.elem;
            Value::Int(v)
        }
        _ => Value::Float(y),
    }])
}
