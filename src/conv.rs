//! Geometry of 2-D convolution and pooling, shared by both backends.

use crate::error::{Error, Result};

/// Stride, padding and dilation of a 2-D convolution, as (height, width) pairs, and its
/// channel groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Step between output positions (each at least 1).
    pub stride: (usize, usize),
    /// Zeros added on each side of the input.
    pub padding: (usize, usize),
    /// Spacing between kernel taps (each at least 1).
    pub dilation: (usize, usize),
    /// Channel groups (at least 1; it divides both channel counts): group `g` of the output
    /// channels sees only group `g` of the input channels, and the weight is
    /// `[c_out, c_in / groups, kh, kw]`. `groups = c_in = c_out` is a depthwise convolution.
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

/// A validated convolution or pooling window over NCHW input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub opts: Conv2dOptions,
}

fn out_extent(
    op: &'static str,
    size: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
) -> Result<usize> {
    if stride == 0 || dil == 0 || k == 0 {
        return Err(Error::InvalidArgument {
            op,
            reason: format!(
                "kernel size, stride and dilation must be at least 1 (kernel {k}, stride {stride}, dilation {dil})"
            ),
        });
    }
    let span = dil * (k - 1) + 1;
    let padded = size + 2 * pad;
    if padded < span {
        return Err(Error::InvalidShape {
            op,
            reason: format!(
                "a kernel spanning {span} does not fit an input of {size} with padding {pad}"
            ),
        });
    }
    Ok((padded - span) / stride + 1)
}

impl Window {
    /// Checks `x: [n, c_in, h, w]` against a kernel of `c_out x c_in x kh x kw`.
    pub(crate) fn new(
        op: &'static str,
        x: &[usize],
        c_out: usize,
        c_in_kernel: Option<usize>,
        k: (usize, usize),
        opts: Conv2dOptions,
    ) -> Result<Window> {
        let [n, c_in, h, w] = x[..] else {
            return Err(Error::InvalidShape {
                op,
                reason: format!("the input must be NCHW (rank 4), got {x:?}"),
            });
        };
        let groups = opts.groups;
        if groups == 0 || !c_in.is_multiple_of(groups) || !c_out.is_multiple_of(groups) {
            return Err(Error::InvalidArgument {
                op,
                reason: format!(
                    "groups {groups} must be at least 1 and divide the {c_in} input and {c_out} output channels"
                ),
            });
        }
        if let Some(ck) = c_in_kernel
            && ck * groups != c_in
        {
            return Err(Error::ShapeMismatch {
                op,
                lhs: x.to_vec(),
                rhs: vec![c_out, ck, k.0, k.1],
            });
        }
        let oh = out_extent(op, h, k.0, opts.stride.0, opts.padding.0, opts.dilation.0)?;
        let ow = out_extent(op, w, k.1, opts.stride.1, opts.padding.1, opts.dilation.1)?;
        Ok(Window {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k.0,
            kw: k.1,
            oh,
            ow,
            opts,
        })
    }

    /// Input channels each output channel sees (`c_in / groups`).
    pub(crate) fn c_in_group(&self) -> usize {
        self.c_in / self.opts.groups
    }

    pub(crate) fn out_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.oh, self.ow]
    }
}
