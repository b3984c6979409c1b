//! 2-D convolution and pooling (NCHW).

use super::Tensor;
use crate::conv::{Conv2dOptions, Window};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::op::UnaryOp;
use crate::shape::Shape;

impl Tensor {
    /// 2-D convolution (cross-correlation, as PyTorch's `conv2d`) of an NCHW input with `weight`
    /// of shape `[c_out, c_in / groups, kh, kw]` and an optional `bias` of shape `[c_out]`
    /// (`opts.groups`: grouped and depthwise convolutions).
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
    ) -> Result<Tensor> {
        self.conv2d_act(weight, bias, opts, None)
    }

    /// [`Tensor::conv2d`] then the activation `act` in one op (a network's conv + ReLU,
    /// HardSwish, SiLU, ...): the CPU applies it to each output plane as its kernel finishes the
    /// plane, so the output is not read and written again; a GPU runs it as one more dispatch.
    /// When gradients are recorded the activation runs as its own op (its backward needs its
    /// input).
    pub fn conv2d_act(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        if let Some(r) = Tensor::via_f32_opt(&[Some(self), Some(weight), bias], |t| {
            let [Some(x), Some(w), b] = t else {
                unreachable!("via_f32_opt keeps the operands' places")
            };
            x.conv2d_act(w, b.as_ref(), opts, act)
        }) {
            return r;
        }
        let present: Vec<&Tensor> = [Some(self), Some(weight), bias]
            .into_iter()
            .flatten()
            .collect();
        if let Some(op) = act
            && Tensor::tracking(&present)
        {
            return self.conv2d(weight, bias, opts)?.unary(op);
        }
        let out = self.conv2d_forward(weight, bias, opts, act)?;
        let present: Vec<&Tensor> = [Some(self), Some(weight), bias]
            .into_iter()
            .flatten()
            .collect();
        if !Tensor::tracking(&present) {
            return Ok(out);
        }
        let [c_out, c_in, kh, kw] = weight.shape()[..] else {
            unreachable!("conv2d_forward checked the weight's rank")
        };
        let win = Window::new("conv2d", self.shape(), c_out, Some(c_in), (kh, kw), opts)?;
        let (x, w) = (self.detach(), weight.detach());
        let has_bias = bias.is_some();
        Ok(out.record("conv2d", &present, move |g, need| {
            let mut grads = vec![
                need[0]
                    .then(|| g.conv2d_grad(&w, &win, false, x.shape()))
                    .transpose()?,
                need[1]
                    .then(|| g.conv2d_grad(&x, &win, true, w.shape()))
                    .transpose()?,
            ];
            if has_bias {
                grads.push(channel_bias_grad(g, need[2])?);
            }
            Ok(grads)
        }))
    }

    /// The transposed 2-D convolution (PyTorch's `conv_transpose2d`, ONNX's `ConvTranspose`):
    /// the input gradient of the convolution `opts` describes, so each input value scatters
    /// the kernel into the output. Input `[n, c_in, h, w]`, `weight` `[c_in, c_out / groups,
    /// kh, kw]`, optional `bias` `[c_out]`; the output is `[n, c_out, oh, ow]` with
    /// `oh = (h − 1)·stride − 2·padding + dilation·(kh − 1) + 1 + output_padding.0` (and so for
    /// `ow`). `output_padding` must be less than the stride or the dilation (as PyTorch asks):
    /// it picks among the output sizes that the convolution maps back to `h`.
    ///
    /// It runs on the convolution's input-gradient kernels (the SGEMM and col2im on the CPU),
    /// not as a convolution of a zero-spread input.
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
        output_padding: (usize, usize),
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d";
        if let Some(r) = Tensor::via_f32_opt(&[Some(self), Some(weight), bias], |t| {
            let [Some(x), Some(w), b] = t else {
                unreachable!("via_f32_opt keeps the operands' places")
            };
            x.conv_transpose2d(w, b.as_ref(), opts, output_padding)
        }) {
            return r;
        }
        for t in [Some(weight), bias].into_iter().flatten() {
            self.same_device(t, OP)?;
            t.expect(DType::F32, OP)?;
        }
        self.expect(DType::F32, OP)?;
        let (&[n, c_in, h, w], &[wc, cout_g, kh, kw]) = (self.shape(), weight.shape()) else {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!(
                    "the input must be [n, c_in, h, w] and the weight [c_in, c_out / groups, kh, kw], got {} and {}",
                    self.shape, weight.shape
                ),
            });
        };
        if wc != c_in {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().to_vec(),
                rhs: weight.shape().to_vec(),
            });
        }
        let groups = opts.groups;
        if groups == 0 || c_in % groups != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!("{groups} groups of {c_in} input channels"),
            });
        }
        let c_out = cout_g * groups;
        if let Some(b) = bias
            && b.shape() != [c_out]
        {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: vec![c_out],
                rhs: b.shape().to_vec(),
            });
        }
        let (s, p, d) = (opts.stride, opts.padding, opts.dilation);
        if s.0 == 0 || s.1 == 0 || d.0 == 0 || d.1 == 0 || kh == 0 || kw == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!(
                    "stride {s:?}, dilation {d:?} and kernel ({kh}, {kw}) must be at least 1"
                ),
            });
        }
        let op = output_padding;
        if op.0 >= s.0.max(d.0) || op.1 >= s.1.max(d.1) {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: format!(
                    "output padding {op:?} must be less than the stride {s:?} or the dilation {d:?}"
                ),
            });
        }
        let extent = |i: usize, s: usize, p: usize, k: usize, d: usize, op: usize| {
            ((i.max(1) - 1) * s + d * (k - 1) + 1 + op).checked_sub(2 * p)
        };
        let (Some(oh), Some(ow)) = (
            extent(h, s.0, p.0, kh, d.0, op.0),
            extent(w, s.1, p.1, kw, d.1, op.1),
        ) else {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!("padding {p:?} removes the whole output"),
            });
        };
        let dims = [n, c_out, oh, ow];
        // The convolution whose input gradient this is: input [n, c_out, oh, ow], weight
        // [c_in, c_out / groups, kh, kw], output [n, c_in, h, w].
        let win = Window::new(OP, &dims, c_in, Some(cout_g), (kh, kw), opts)?;
        if (win.oh, win.ow) != (h, w) {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!("an output of {oh}x{ow} does not map back to {h}x{w}"),
            });
        }
        let y = if self.numel() == 0 || weight.numel() == 0 {
            Tensor::zeros(&self.device, &dims)? // an empty sum
        } else {
            self.detach()
                .conv2d_grad(&weight.detach(), &win, false, &dims)?
        };
        let y = match bias {
            Some(b) => y.add(&b.detach().reshape(&[c_out, 1, 1])?)?,
            None => y,
        };
        let present: Vec<&Tensor> = [Some(self), Some(weight), bias]
            .into_iter()
            .flatten()
            .collect();
        if !Tensor::tracking(&present) {
            return Ok(y);
        }
        let (x, wt) = (self.detach(), weight.detach());
        let has_bias = bias.is_some();
        Ok(y.record(OP, &present, move |g, need| {
            // The forward convolution of the gradient gives the input's; the weight's is the
            // convolution's weight gradient with the roles of input and output swapped.
            let mut grads = vec![
                need[0]
                    .then(|| g.conv2d_forward(&wt, None, opts, None))
                    .transpose()?,
                need[1]
                    .then(|| x.conv2d_grad(g, &win, true, wt.shape()))
                    .transpose()?,
            ];
            if has_bias {
                grads.push(channel_bias_grad(g, need[2])?);
            }
            Ok(grads)
        }))
    }

    fn conv2d_forward(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        for t in [Some(weight), bias].into_iter().flatten() {
            self.same_device(t, "conv2d")?;
            t.expect(DType::F32, "conv2d")?;
        }
        self.expect(DType::F32, "conv2d")?;
        let [c_out, c_in, kh, kw] = weight.shape()[..] else {
            return Err(Error::InvalidShape {
                op: "conv2d",
                reason: format!(
                    "the weight must be [c_out, c_in, kh, kw], got {}",
                    weight.shape
                ),
            });
        };
        if let Some(b) = bias
            && b.shape() != [c_out]
        {
            return Err(Error::ShapeMismatch {
                op: "conv2d",
                lhs: weight.shape().to_vec(),
                rhs: b.shape().to_vec(),
            });
        }
        let g = Window::new("conv2d", self.shape(), c_out, Some(c_in), (kh, kw), opts)?;
        let dims = g.out_dims();
        let n_out: usize = dims.iter().product();
        if self.numel() == 0 || weight.numel() == 0 {
            // An empty sum: zeros, plus the bias where there is one.
            let zeros = Tensor::zeros(&self.device, &dims)?;
            let y = match bias {
                Some(b) if n_out > 0 => zeros.add(&b.reshape(&[c_out, 1, 1])?)?,
                _ => zeros,
            };
            return match act {
                Some(op) => y.unary(op),
                None => Ok(y),
            };
        }
        let pointwise = (kh, kw) == (1, 1)
            && opts.stride == (1, 1)
            && opts.padding == (0, 0)
            && opts.groups == 1;
        if pointwise && !self.device.is_cpu() {
            // A pointwise convolution is a matrix product over channels: [c_out, c_in] times
            // each image's [c_in, h·w], on the GPU's tuned matmul kernels. (The CPU's
            // convolution runs it as that product already, bias and activation in its epilogue.)
            let (n, h, w) = (g.n, g.h, g.w);
            let y = weight
                .reshape(&[c_out, c_in])?
                .matmul(&self.reshape(&[n, c_in, h * w])?)?;
            let y = match bias {
                Some(b) => y.add(&b.reshape(&[c_out, 1])?)?,
                None => y,
            };
            let y = y.reshape(&dims)?;
            return match act {
                Some(op) => y.unary(op),
                None => Ok(y),
            };
        }
        let storage = (self.storage).conv2d(&weight.storage, bias.map(|b| &b.storage), &g, act)?;
        Ok(self.with(storage, Shape::new(&dims)?))
    }

    fn pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        max: bool,
    ) -> Result<Tensor> {
        let op = if max { "max_pool2d" } else { "avg_pool2d" };
        if let Some(r) = Tensor::via_f32(&[self], |t| t[0].pool2d(kernel, stride, padding, max)) {
            return r;
        }
        self.expect(DType::F32, op)?;
        if padding.0 * 2 > kernel.0 || padding.1 * 2 > kernel.1 {
            return Err(Error::InvalidArgument {
                op,
                reason: format!("padding {padding:?} must be at most half the kernel {kernel:?}"),
            });
        }
        let channels = self.shape().get(1).copied().unwrap_or(0);
        let opts = Conv2dOptions {
            stride,
            padding,
            ..Conv2dOptions::default()
        };
        let g = Window::new(op, self.shape(), channels, None, kernel, opts)?;
        let dims = g.out_dims();
        let storage = self.storage.pool2d(&g, max)?;
        let out = self.with(storage, Shape::new(&dims)?);
        if !Tensor::tracking(&[self]) {
            return Ok(out);
        }
        let x = self.detach();
        Ok(out.record(op, &[self], move |grad, _| {
            Ok(vec![Some(x.pool2d_grad(grad, &g, max)?)])
        }))
    }

    /// 2-D max pooling of an NCHW input (padding ignored; NaN propagates).
    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        self.pool2d(kernel, stride, padding, true)
    }

    /// 2-D average pooling of an NCHW input (padded positions count as zeros; divides by kh·kw).
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        self.pool2d(kernel, stride, padding, false)
    }
}

/// The gradient of a bias added per channel to `[n, c, h, w]` outputs whose gradient is `g`
/// (`g` summed over n, h and w), where it is needed.
fn channel_bias_grad(g: &Tensor, needed: bool) -> Result<Option<Tensor>> {
    needed
        .then(|| g.sum(-1, false)?.sum(-1, false)?.sum(0, false))
        .transpose()
}
