//! Object detection's post-processing: `NonMaxSuppression`.

use super::{Args, Ctx};
use crate::value::{IntTensor, Value};
use kiln::Result;

/// `NonMaxSuppression`, on the host as ONNX's reference runs it: per batch and class, the
/// boxes scoring above `score_threshold` (all, when it is absent) from the highest score (the
/// lower index first among equals), each kept unless its IoU with one already kept exceeds
/// `iou_threshold`, at most `max_output_boxes_per_class` (0 when absent). Boxes are corners
/// `[y1, x1, y2, x2]` in either order, or `[x_center, y_center, width, height]` with
/// `center_point_box` = 1. Output `[selected, 3]` int64: (batch, class, box).
pub(super) fn non_max_suppression(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (boxes, scores) = (ctx.input(args, 0)?, ctx.input(args, 1)?);
    let (&[nb, nbox, four], &[sb, classes, sbox]) = (boxes.shape(), scores.shape()) else {
        return Err(ctx.invalid(format!(
            "boxes {:?} and scores {:?}",
            boxes.shape(),
            scores.shape()
        )));
    };
    if four != 4 || sb != nb || sbox != nbox {
        return Err(ctx.invalid(format!(
            "boxes {:?} and scores {:?}",
            boxes.shape(),
            scores.shape()
        )));
    }
    let scalar = |i: usize| -> Result<Option<f64>> {
        match args.get(i).and_then(Option::as_ref) {
            None => Ok(None),
            Some(v) => match v.to_f64()?[..] {
                [] => Ok(None),
                [x] => Ok(Some(x)),
                _ => Err(ctx.invalid(format!("input {i} must hold one value"))),
            },
        }
    };
    let max_out = scalar(2)?.unwrap_or(0.0).max(0.0) as usize;
    let iou_threshold = scalar(3)?.unwrap_or(0.0) as f32;
    let score_threshold = scalar(4)?.map(|v| v as f32);
    let center = ctx.int("center_point_box", 0) != 0;
    let b: Vec<f32> = boxes.to_f64()?.into_iter().map(|v| v as f32).collect();
    let s: Vec<f32> = scores.to_f64()?.into_iter().map(|v| v as f32).collect();
    // (x_min, x_max, y_min, y_max) of a box.
    let extent = |batch: usize, i: usize| -> (f32, f32, f32, f32) {
        let v = &b[(batch * nbox + i) * 4..][..4];
        if center {
            let (hw, hh) = (v[2] / 2.0, v[3] / 2.0);
            (v[0] - hw, v[0] + hw, v[1] - hh, v[1] + hh)
        } else {
            (
                v[1].min(v[3]),
                v[1].max(v[3]),
                v[0].min(v[2]),
                v[0].max(v[2]),
            )
        }
    };
    let suppresses = |batch: usize, i: usize, j: usize| -> bool {
        let (a, c) = (extent(batch, i), extent(batch, j));
        let (ix0, ix1) = (a.0.max(c.0), a.1.min(c.1));
        let (iy0, iy1) = (a.2.max(c.2), a.3.min(c.3));
        if ix1 <= ix0 || iy1 <= iy0 {
            return false;
        }
        let inter = (ix1 - ix0) * (iy1 - iy0);
        let (area_a, area_c) = ((a.1 - a.0) * (a.3 - a.2), (c.1 - c.0) * (c.3 - c.2));
        let union = area_a + area_c - inter;
        if inter <= 0.0 || area_a <= 0.0 || area_c <= 0.0 || union <= 0.0 {
            return false;
        }
        inter / union > iou_threshold
    };
    let mut out = Vec::new();
    for batch in 0..nb {
        for class in 0..classes {
            let row = &s[(batch * classes + class) * nbox..][..nbox];
            let mut order: Vec<usize> = (0..nbox)
                .filter(|&i| score_threshold.is_none_or(|t| row[i] > t))
                .collect();
            // Highest score first, the lower index first among equal scores.
            order.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
            let mut kept: Vec<usize> = Vec::new();
            for i in order {
                if kept.len() >= max_out {
                    break;
                }
                if kept.iter().all(|&k| !suppresses(batch, i, k)) {
                    kept.push(i);
                    out.extend([batch as i64, class as i64, i as i64]);
                }
            }
        }
    }
    let n = out.len() / 3;
    Ok(vec![Value::Int(IntTensor::new(vec![n, 3], out))])
}
