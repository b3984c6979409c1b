//! The op table's 2-D convolution and pooling.

use super::*;
use kiln::{Device, Error, Tensor};

/// The conv entries of the op table.
pub fn table() -> Vec<OpInfo> {
    vec![
        OpInfo {
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
        OpInfo {
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

/// (input NCHW, weight, bias) samples: odd sizes, 1x1 kernels, channels 1 and 3, an empty batch.
pub fn conv_samples() -> Vec<Sample> {
    conv_cases(
        110,
        &[
            (&[2, 3, 9, 7], &[4, 3, 3, 3]),
            (&[1, 1, 5, 5], &[2, 1, 1, 1]),
            (&[1, 2, 17, 16], &[3, 2, 5, 2]),
            (&[0, 2, 4, 4], &[1, 2, 3, 3]),
            (&[1, 4, 3, 3], &[2, 4, 3, 3]),
        ],
    )
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
