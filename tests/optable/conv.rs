//! The op table's 2-D convolution and pooling.

use super::*;
use kiln::{Device, Error, Tensor};

/// The conv entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv2d(bias)",
            grad: || Grad::wrt(THREE),
            samples: conv_samples,
            run: |t| t[0].conv2d(&t[1], Some(&t[2]), Default::default()),
            reference: |r| conv_ref(r, Default::default(), true),
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: conv_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            // One input channel over one row without padding: the CPU reads the input as its
            // column matrix through strides (an STFT's frames); the second sample reaches the
            // SGEMM.
            name: "conv2d(1-D frames, stride 16, bias)",
            grad: || Grad::wrt(THREE),
            samples: || {
                conv_cases(
                    118,
                    &[
                        (&[2, 1, 1, 300], &[5, 1, 1, 40]),
                        (&[1, 1, 1, 1000], &[64, 1, 1, 400]),
                    ],
                )
            },
            run: |t| t[0].conv2d(&t[1], Some(&t[2]), frames()),
            reference: |r| conv_ref(r, frames(), true),
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv2d(stride 2, pad 1, dilation 2)",
            grad: || Grad::wrt(THREE),
            samples: conv_samples,
            run: |t| {
                t[0].conv2d(
                    &t[1],
                    None,
                    kiln::Conv2dOptions {
                        stride: (2, 1),
                        padding: (1, 2),
                        dilation: (2, 1),
                        groups: 1,
                    },
                )
            },
            reference: |r| {
                conv_ref(
                    r,
                    kiln::Conv2dOptions {
                        stride: (2, 1),
                        padding: (1, 2),
                        dilation: (2, 1),
                        groups: 1,
                    },
                    false,
                )
            },
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv2d(groups 2, bias, pad 1)",
            grad: || Grad::wrt(THREE),
            samples: grouped_samples,
            run: |t| t[0].conv2d(&t[1], Some(&t[2]), grouped(2)),
            reference: |r| conv_ref(r, grouped(2), true),
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: grouped_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv2d(depthwise, stride 2, pad 1)",
            grad: || Grad::wrt(THREE),
            samples: depthwise_samples,
            run: |t| {
                let g = t[0].shape()[1];
                t[0].conv2d(&t[1], Some(&t[2]), depthwise(g))
            },
            reference: |r| conv_ref(r, depthwise(r[0].shape[1]), true),
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        // The activation inside the convolution: on the CPU each kernel (the SGEMM's epilogue
        // with rows numbered across images, the depthwise and direct loops) applies it to the
        // planes it writes; the large samples reach the SGEMM and the pointwise product.
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv2d_act(bias, silu)",
            grad: || Grad::wrt(THREE),
            samples: act_samples,
            run: |t| {
                let act = Some(kiln::UnaryOp::Silu);
                t[0].conv2d_act(&t[1], Some(&t[2]), Default::default(), act)
            },
            reference: |r| {
                act_ref(conv_ref(r, Default::default(), true), |v| {
                    v / (1.0 + (-v).exp())
                })
            },
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv2d_act(groups 2, pad 1, hard_swish)",
            grad: || {
                Grad::NoGrad(
                    "the hard swish's kinks at ±3 defeat finite differences; the silu entry checks the composition's gradient",
                )
            },
            samples: grouped_samples,
            run: |t| {
                let act = Some(kiln::UnaryOp::HardSwish);
                t[0].conv2d_act(&t[1], Some(&t[2]), grouped(2), act)
            },
            reference: |r| {
                act_ref(conv_ref(r, grouped(2), true), |v| {
                    v * (v / 6.0 + 0.5).clamp(0.0, 1.0)
                })
            },
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv2d_act(depthwise, stride 2, pad 1, clamp 0..6)",
            grad: || {
                Grad::NoGrad(
                    "the clamp's kinks defeat finite differences; the silu entry checks the composition's gradient",
                )
            },
            samples: depthwise_samples,
            run: |t| {
                let g = t[0].shape()[1];
                let act = Some(kiln::UnaryOp::Clamp(0.0, 6.0));
                t[0].conv2d_act(&t[1], Some(&t[2]), depthwise(g), act)
            },
            reference: |r| {
                act_ref(conv_ref(r, depthwise(r[0].shape[1]), true), |v| {
                    v.clamp(0.0, 6.0)
                })
            },
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[0].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv_transpose2d(bias)",
            grad: || Grad::wrt(THREE),
            samples: || transpose_samples(1),
            run: |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), Default::default(), (0, 0)),
            reference: |r| conv_transpose_ref(r, Default::default(), (0, 0)),
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[1].max(1)) as f64,
                    1e-5,
                )
            },
            errors: conv_transpose_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "conv_transpose2d(stride 2, pad 1, dilation 2, output padding 1, groups 2)",
            grad: || Grad::wrt(THREE),
            samples: || transpose_samples(2),
            run: |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), transposed_opts(), (1, 0)),
            reference: |r| conv_transpose_ref(r, transposed_opts(), (1, 0)),
            tol: |r| {
                (
                    1e-6 * (1 + r[1].data.len() / r[1].shape[1].max(1)) as f64,
                    1e-5,
                )
            },
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "max_pool2d(3, 2, 1)",
            grad: own,
            samples: || {
                shaped(
                    &[&[2, 3, 9, 7], &[1, 1, 5, 5], &[1, 2, 17, 16], &[0, 2, 4, 4]],
                    111,
                )
            },
            run: |t| t[0].max_pool2d((3, 3), (2, 2), (1, 1)),
            reference: |r| pool_ref(&r[0], (3, 3), (2, 2), (1, 1), true),
            tol: |_| (0.0, 0.0),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "avg_pool2d(2, 2)",
            grad: own,
            samples: || {
                shaped(
                    &[&[2, 3, 9, 7], &[1, 1, 5, 5], &[1, 2, 17, 16], &[0, 2, 4, 4]],
                    112,
                )
            },
            run: |t| t[0].avg_pool2d((2, 2), (2, 2), (0, 0)),
            reference: |r| pool_ref(&r[0], (2, 2), (2, 2), (0, 0), false),
            tol: |_| (1e-6, 1e-6),
            errors: no_errors,
        },
        OpInfo {
            index_inputs: &[],
            packed_inputs: &[],
            name: "avg_pool2d(3, 1, 1)",
            grad: own,
            samples: || shaped(&[&[1, 2, 6, 5], &[2, 1, 3, 3]], 113),
            run: |t| t[0].avg_pool2d((3, 3), (1, 1), (1, 1)),
            reference: |r| pool_ref(&r[0], (3, 3), (1, 1), (1, 1), false),
            tol: |_| (1e-6, 1e-6),
            errors: no_errors,
        },
    ]
}

/// Stride (2, 1), padding (1, 0), dilation (1, 2), 2 groups.
fn transposed_opts() -> kiln::Conv2dOptions {
    kiln::Conv2dOptions {
        stride: (2, 1),
        padding: (1, 0),
        dilation: (1, 2),
        groups: 2,
    }
}

/// (input NCHW, weight `[c_in, c_out / groups, kh, kw]`, bias `[c_out]`) samples for
/// `groups`: the 2x2 stride-2 upsampling of a segmentation head, odd sizes, an empty batch.
fn transpose_samples(groups: usize) -> Vec<Sample> {
    let mut rng = Lcg(115 + groups as u64);
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 4, 5, 6], &[4, 3, 2, 2]),
        (&[1, 2, 3, 4], &[2, 1, 3, 3]),
        (&[1, 6, 4, 3], &[6, 2, 1, 3]),
        (&[0, 2, 3, 3], &[2, 2, 2, 2]),
    ];
    cases
        .iter()
        .map(|(x, w)| {
            let (nx, nw, c_out) = (x.iter().product(), w.iter().product(), w[1] * groups);
            Sample {
                inputs: vec![
                    (x.to_vec(), rng.vec(nx, -1.0, 1.0)),
                    (w.to_vec(), rng.vec(nw, -1.0, 1.0)),
                    (vec![c_out], rng.vec(c_out, -1.0, 1.0)),
                ],
            }
        })
        .collect()
}

/// The transposed convolution by its definition: every input value scatters the kernel.
fn conv_transpose_ref(r: &[Ref], opts: kiln::Conv2dOptions, out_pad: (usize, usize)) -> Ref {
    let (x, w, b) = (&r[0], &r[1], &r[2]);
    let [n, c_in, h, wd] = x.shape[..] else {
        unreachable!()
    };
    let [_, cog, kh, kw] = w.shape[..] else {
        unreachable!()
    };
    let (s, p, d, g) = (opts.stride, opts.padding, opts.dilation, opts.groups);
    let c_out = cog * g;
    let full_h = (h.max(1) - 1) * s.0 + d.0 * (kh - 1) + 1 + out_pad.0;
    let full_w = (wd.max(1) - 1) * s.1 + d.1 * (kw - 1) + 1 + out_pad.1;
    let (oh, ow) = (full_h - 2 * p.0, full_w - 2 * p.1);
    let mut data = vec![0.0; n * c_out * oh * ow];
    for bi in 0..n {
        for co in 0..c_out {
            for v in &mut data[(bi * c_out + co) * oh * ow..][..oh * ow] {
                *v = b.data[co];
            }
        }
        for ci in 0..c_in {
            let grp = ci / (c_in / g);
            for iy in 0..h {
                for ix in 0..wd {
                    let xv = x.data[((bi * c_in + ci) * h + iy) * wd + ix];
                    for j in 0..cog {
                        let co = grp * cog + j;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let oy = (iy * s.0 + ky * d.0) as isize - p.0 as isize;
                                let ox = (ix * s.1 + kx * d.1) as isize - p.1 as isize;
                                if oy >= 0 && ox >= 0 && (oy as usize) < oh && (ox as usize) < ow {
                                    data[((bi * c_out + co) * oh + oy as usize) * ow
                                        + ox as usize] +=
                                        xv * w.data[((ci * cog + j) * kh + ky) * kw + kx];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ref {
        shape: vec![n, c_out, oh, ow],
        data,
    }
}

/// A weight for other input channels, groups that do not divide them, an output padding as
/// large as the stride, padding that removes the whole output, a bias of the wrong length.
fn conv_transpose_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[1, 4, 3, 3]).unwrap();
    let w = Tensor::zeros(d, &[4, 2, 2, 2]).unwrap();
    let opts = |stride, padding, groups| kiln::Conv2dOptions {
        stride: (stride, stride),
        padding: (padding, padding),
        groups,
        ..Default::default()
    };
    vec![
        (
            "a weight for 3 input channels",
            x.conv_transpose2d(
                &Tensor::zeros(d, &[3, 2, 2, 2]).unwrap(),
                None,
                opts(1, 0, 1),
                (0, 0),
            ),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "conv_transpose2d",
                        ..
                    }
                )
            },
        ),
        (
            "3 groups of 4 channels",
            x.conv_transpose2d(&w, None, opts(1, 0, 3), (0, 0)),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        op: "conv_transpose2d",
                        ..
                    }
                )
            },
        ),
        (
            "output padding 2 at stride 2",
            x.conv_transpose2d(&w, None, opts(2, 0, 1), (2, 0)),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        op: "conv_transpose2d",
                        ..
                    }
                )
            },
        ),
        (
            "padding 3 of a 4-wide output",
            x.conv_transpose2d(&w, None, opts(1, 3, 1), (0, 0)),
            |e| {
                matches!(
                    e,
                    Error::InvalidShape {
                        op: "conv_transpose2d",
                        ..
                    }
                )
            },
        ),
        (
            "a bias of 3 for 2 outputs",
            x.conv_transpose2d(
                &w,
                Some(&Tensor::zeros(d, &[3]).unwrap()),
                opts(1, 0, 1),
                (0, 0),
            ),
            |e| {
                matches!(
                    e,
                    Error::ShapeMismatch {
                        op: "conv_transpose2d",
                        ..
                    }
                )
            },
        ),
    ]
}

/// (input NCHW, weight, bias) samples: odd sizes, 1x1 kernels, channels 1 and 3, an empty batch.
/// A framing's options: stride 16 along the row.
fn frames() -> kiln::Conv2dOptions {
    kiln::Conv2dOptions {
        stride: (1, 16),
        ..Default::default()
    }
}

pub fn conv_samples() -> Vec<Sample> {
    conv_cases(
        110,
        &[
            (&[2, 3, 9, 7], &[4, 3, 3, 3]),
            (&[1, 1, 5, 5], &[2, 1, 1, 1]),
            (&[1, 2, 17, 16], &[3, 2, 5, 2]),
            (&[0, 2, 4, 4], &[1, 2, 3, 3]),
            (&[1, 4, 3, 3], &[2, 4, 3, 3]),
            // The CPU's register tiles (`conv_tile.rs`): 40 input channels take two passes a
            // tile, 13 output channels leave a block part empty, and the second image starts
            // from phases the first left; at stride 2 and dilation 2 the second sample's
            // output still fills tiles across rows.
            (&[2, 40, 12, 12], &[13, 40, 3, 3]),
            (&[1, 3, 33, 30], &[5, 3, 3, 3]),
            // A 1-D convolution down columns of one value: the CPU runs it along a row.
            (&[2, 3, 20, 1], &[4, 3, 5, 1]),
        ],
    )
}

/// [`conv_samples`]' small shapes and two that reach the CPU's SGEMM (at least 2^21
/// multiply-adds a product) over two images: a 3×3 kernel through its column matrix, and a
/// pointwise one read in place. Values of ±4 so that activations see both sides of their bends.
pub fn act_samples() -> Vec<Sample> {
    let mut s = conv_cases(
        115,
        &[
            (&[2, 3, 9, 7], &[4, 3, 3, 3]),
            (&[1, 1, 5, 5], &[2, 1, 1, 1]),
            (&[0, 2, 4, 4], &[1, 2, 3, 3]),
            (&[2, 16, 24, 24], &[32, 16, 3, 3]),
            (&[2, 128, 32, 32], &[64, 128, 1, 1]),
        ],
    );
    for sample in &mut s {
        sample.inputs[0].1.iter_mut().for_each(|v| *v *= 4.0);
    }
    s
}

/// `f` on every value of a reference.
fn act_ref(mut r: Ref, f: fn(f64) -> f64) -> Ref {
    r.data.iter_mut().for_each(|v| *v = f(*v));
    r
}

/// Samples for 2 groups: weights `[c_out, c_in / 2, kh, kw]`.
pub fn grouped_samples() -> Vec<Sample> {
    conv_cases(
        113,
        &[
            (&[2, 4, 7, 6], &[6, 2, 3, 3]),
            (&[1, 6, 5, 5], &[4, 3, 1, 1]),
            (&[1, 2, 6, 9], &[2, 1, 3, 2]),
        ],
    )
}

/// Depthwise samples: one filter per channel (`groups = c_in = c_out`).
pub fn depthwise_samples() -> Vec<Sample> {
    conv_cases(
        114,
        &[
            (&[2, 3, 9, 8], &[3, 1, 3, 3]),
            (&[1, 8, 6, 6], &[8, 1, 3, 3]),
            (&[1, 1, 5, 4], &[1, 1, 3, 3]),
        ],
    )
}

fn conv_cases(seed: u64, cases: &[(&[usize], &[usize])]) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    cases
        .iter()
        .map(|(x, w)| {
            let (nx, nw) = (x.iter().product(), w.iter().product());
            Sample {
                inputs: vec![
                    (x.to_vec(), rng.vec(nx, -1.0, 1.0)),
                    (w.to_vec(), rng.vec(nw, -1.0, 1.0)),
                    (vec![w[0]], rng.vec(w[0], -1.0, 1.0)),
                ],
            }
        })
        .collect()
}

pub fn conv_ref(r: &[Ref], opts: kiln::Conv2dOptions, bias: bool) -> Ref {
    let (x, w, b) = (&r[0], &r[1], &r[2]);
    let [n, c_in, h, wd] = x.shape[..] else {
        unreachable!()
    };
    let ci = c_in / opts.groups;
    let [co, _, kh, kw] = w.shape[..] else {
        unreachable!()
    };
    let (sh, sw) = opts.stride;
    let (ph, pw) = opts.padding;
    let (dh, dw) = opts.dilation;
    let oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    let ow = (wd + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    let mut data = vec![];
    for bi in 0..n {
        for c in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = if bias { b.data[c] } else { 0.0 };
                    let first = c / (co / opts.groups) * ci;
                    for i in 0..ci {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky * dh) as isize - ph as isize;
                                let ix = (ox * sw + kx * dw) as isize - pw as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    acc += x.data[((bi * c_in + first + i) * h + iy as usize) * wd
                                        + ix as usize]
                                        * w.data[((c * ci + i) * kh + ky) * kw + kx];
                                }
                            }
                        }
                    }
                    data.push(acc);
                }
            }
        }
    }
    Ref {
        shape: vec![n, co, oh, ow],
        data,
    }
}

pub fn pool_ref(
    x: &Ref,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    max: bool,
) -> Ref {
    let [n, c, h, w] = x.shape[..] else {
        unreachable!()
    };
    let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
    let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
    let mut data = vec![];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut vals = vec![];
                for ky in 0..k.0 {
                    for kx in 0..k.1 {
                        let iy = (oy * s.0 + ky) as isize - p.0 as isize;
                        let ix = (ox * s.1 + kx) as isize - p.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            vals.push(x.data[(plane * h + iy as usize) * w + ix as usize]);
                        }
                    }
                }
                data.push(if max {
                    vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                } else {
                    vals.iter().sum::<f64>() / (k.0 * k.1) as f64
                });
            }
        }
    }
    Ref {
        shape: vec![n, c, oh, ow],
        data,
    }
}

/// Padding 1 and `groups` channel groups.
fn grouped(groups: usize) -> kiln::Conv2dOptions {
    kiln::Conv2dOptions {
        padding: (1, 1),
        groups,
        ..Default::default()
    }
}

/// A depthwise convolution of `channels` channels, stride 2, padding 1.
fn depthwise(channels: usize) -> kiln::Conv2dOptions {
    kiln::Conv2dOptions {
        stride: (2, 2),
        padding: (1, 1),
        groups: channels,
        ..Default::default()
    }
}

/// Groups that do not divide the channels, groups 0, and a weight of the wrong group width.
pub fn grouped_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[1, 4, 6, 6]).unwrap();
    let w = Tensor::zeros(d, &[6, 2, 3, 3]).unwrap();
    let bad = |e: &Error| matches!(e, Error::InvalidArgument { op: "conv2d", .. });
    vec![
        (
            "groups 3 of 4 channels",
            x.conv2d(&w, None, grouped(3)),
            bad,
        ),
        ("groups 0", x.conv2d(&w, None, grouped(0)), bad),
        (
            "a weight 4 wide for 2 groups of 2",
            x.conv2d(&Tensor::zeros(d, &[6, 4, 3, 3]).unwrap(), None, grouped(2)),
            |e| matches!(e, Error::ShapeMismatch { op: "conv2d", .. }),
        ),
    ]
}

pub fn conv_errors(d: &Device) -> Vec<ErrorCase> {
    let x = Tensor::zeros(d, &[1, 3, 8, 8]).unwrap();
    let w = Tensor::zeros(d, &[2, 4, 3, 3]).unwrap();
    let w3 = Tensor::zeros(d, &[2, 3, 3]).unwrap();
    let big = Tensor::zeros(d, &[2, 3, 9, 9]).unwrap();
    let s0 = kiln::Conv2dOptions {
        stride: (0, 1),
        ..Default::default()
    };
    vec![
        (
            "c_in 3 vs weight c_in 4",
            x.conv2d(&w, None, Default::default()),
            |e| matches!(e, Error::ShapeMismatch { op: "conv2d", .. }),
        ),
        (
            "weight of rank 3",
            x.conv2d(&w3, None, Default::default()),
            |e| matches!(e, Error::InvalidShape { op: "conv2d", .. }),
        ),
        (
            "kernel larger than the input",
            x.conv2d(&big, None, Default::default()),
            |e| {
                matches!(e, Error::InvalidShape { op: "conv2d", .. })
                    && e.to_string().contains("does not fit")
            },
        ),
        (
            "stride 0",
            x.conv2d(&Tensor::zeros(d, &[2, 3, 3, 3]).unwrap(), None, s0),
            |e| matches!(e, Error::InvalidArgument { op: "conv2d", .. }),
        ),
        (
            "input of rank 3",
            w3.max_pool2d((2, 2), (2, 2), (0, 0)),
            |e| {
                matches!(
                    e,
                    Error::InvalidShape {
                        op: "max_pool2d",
                        ..
                    }
                )
            },
        ),
        (
            "padding over half the kernel",
            x.avg_pool2d((2, 2), (1, 1), (2, 0)),
            |e| {
                matches!(
                    e,
                    Error::InvalidArgument {
                        op: "avg_pool2d",
                        ..
                    }
                )
            },
        ),
    ]
}
