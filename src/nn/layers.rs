//! Layers: `Linear`, `Conv2d`, `LayerNorm`, `Embedding`, `Dropout`, activations, `Flatten`,
//! `MaxPool2d`, and `Sequential` to chain them. Initialisation follows PyTorch's defaults,
//! from kiln's seeded generator, so a model starts with the same values on every device.

use super::module::{Module, prefixed};
use crate::conv::Conv2dOptions;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::op::UnaryOp;
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicU64, Ordering};

/// Uniform values in `[-bound, bound)` that require gradients.
fn uniform(dev: &Device, shape: &[usize], bound: f32, seed: u64) -> Result<Tensor> {
    Tensor::rand(dev, shape, seed)?
        .mul_scalar(2.0 * bound)?
        .sub_scalar(bound)?
        .with_grad()
}

/// `[("weight", w), ("bias", b)]`, the bias only if there is one.
fn weight_and_bias<T>(weight: T, bias: Option<T>) -> Vec<(String, T)> {
    let mut p = vec![("weight".to_string(), weight)];
    p.extend(bias.map(|b| ("bias".to_string(), b)));
    p
}

/// `y = x · weightᵀ + bias`, weight `[out, in]`, bias `[out]` (PyTorch's `nn.Linear`).
#[derive(Debug)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: Tensor,
    /// `[out_features]`, if the layer has one.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A layer initialised as PyTorch does: weight and bias uniform in ±1/√in.
    pub fn new(dev: &Device, in_features: usize, out_features: usize, seed: u64) -> Result<Linear> {
        let bound = 1.0 / (in_features.max(1) as f32).sqrt();
        Ok(Linear {
            weight: uniform(dev, &[out_features, in_features], bound, seed)?,
            bias: Some(uniform(dev, &[out_features], bound, seed ^ 0x9e37_79b9)?),
        })
    }

    /// The same layer without a bias.
    pub fn without_bias(mut self) -> Linear {
        self.bias = None;
        self
    }

    /// `residual + self.forward(x)` in one op ([`Tensor::linear_add`]): a residual block's
    /// output projection, with the sum in the product's epilogue.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        x.linear_add(&self.weight, self.bias.as_ref(), residual)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref(), None)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        weight_and_bias(&self.weight, self.bias.as_ref())
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        weight_and_bias(&mut self.weight, self.bias.as_mut())
    }
}

/// 2-D convolution over NCHW input (PyTorch's `nn.Conv2d`, groups = 1).
#[derive(Debug)]
pub struct Conv2d {
    /// `[c_out, c_in, kh, kw]`.
    pub weight: Tensor,
    /// `[c_out]`.
    pub bias: Option<Tensor>,
    /// Stride, padding, dilation.
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// A layer initialised as PyTorch does: uniform in ±1/√(c_in·kh·kw).
    pub fn new(
        dev: &Device,
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize),
        options: Conv2dOptions,
        seed: u64,
    ) -> Result<Conv2d> {
        let fan_in = (c_in * kernel.0 * kernel.1).max(1);
        let bound = 1.0 / (fan_in as f32).sqrt();
        Ok(Conv2d {
            weight: uniform(dev, &[c_out, c_in, kernel.0, kernel.1], bound, seed)?,
            bias: Some(uniform(dev, &[c_out], bound, seed ^ 0x9e37_79b9)?),
            options,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.options)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        weight_and_bias(&self.weight, self.bias.as_ref())
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        weight_and_bias(&mut self.weight, self.bias.as_mut())
    }
}

/// Layer normalisation over the last dimension with a learned scale and shift.
#[derive(Debug)]
pub struct LayerNorm {
    /// Scale, `[dim]`, initially ones.
    pub weight: Tensor,
    /// Shift, `[dim]`, initially zeros.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// Normalises vectors of length `dim` (eps 1e-5, as PyTorch).
    pub fn new(dev: &Device, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: Tensor::ones(dev, &[dim])?.with_grad()?,
            bias: Tensor::zeros(dev, &[dim])?.with_grad()?,
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(Some(&self.weight), Some(&self.bias), self.eps)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        vec![
            ("weight".to_string(), &self.weight),
            ("bias".to_string(), &self.bias),
        ]
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        vec![
            ("weight".to_string(), &mut self.weight),
            ("bias".to_string(), &mut self.bias),
        ]
    }
}

/// A lookup table: u32 ids of any shape to rows of `weight` (`[vocab, dim]`).
#[derive(Debug)]
pub struct Embedding {
    /// `[vocab, dim]`, initially N(0, 1) as in PyTorch.
    pub weight: Tensor,
}

impl Embedding {
    /// A table of `vocab` vectors of length `dim`.
    pub fn new(dev: &Device, vocab: usize, dim: usize, seed: u64) -> Result<Embedding> {
        Ok(Embedding {
            weight: Tensor::randn(dev, &[vocab, dim], seed)?.with_grad()?,
        })
    }
}

impl Module for Embedding {
    /// `ids` is a u32 tensor; the result has shape `ids.shape + [dim]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Tensor::embedding(&self.weight, ids)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        vec![("weight".to_string(), &self.weight)]
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        vec![("weight".to_string(), &mut self.weight)]
    }
}

/// Zeroes each value with probability `p` while training and scales the rest by 1/(1-p);
/// the identity in evaluation. Masks come from kiln's seeded generator (a new seed per call),
/// so a run is reproducible and the same on every device.
#[derive(Debug)]
pub struct Dropout {
    p: f32,
    training: bool,
    calls: AtomicU64,
    seed: u64,
}

impl Dropout {
    /// Dropout with probability `p` in `[0, 1)` (`InvalidShape` otherwise).
    pub fn new(p: f32, seed: u64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument {
                op: "dropout",
                reason: format!("the probability must be in [0, 1), got {p}"),
            });
        }
        Ok(Dropout {
            p,
            training: true,
            calls: AtomicU64::new(0),
            seed,
        })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        x.device().refuse_in_capture(
            "Dropout draws its masks on the host, so every replay would repeat one mask",
        )?;
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let seed = self
            .seed
            .wrapping_add(call.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let keep = Tensor::rand(x.device(), x.shape(), seed)?
            .ge(&Tensor::full(x.device(), &[], self.p)?)?
            .mul_scalar(1.0 / (1.0 - self.p))?;
        x.mul(&keep)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        Vec::new()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        Vec::new()
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// An elementwise activation as a layer (`Activation(UnaryOp::Relu)`, ...).
#[derive(Debug, Clone, Copy)]
pub struct Activation(pub UnaryOp);

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.unary(self.0)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        Vec::new()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        Vec::new()
    }
}

/// Flattens every dimension after the first: `[n, ...] -> [n, prod(...)]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.shape().first().copied().unwrap_or(1);
        let rest = x.shape().iter().skip(1).product();
        x.reshape(&[n, rest])
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        Vec::new()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        Vec::new()
    }
}

/// 2-D max pooling as a layer (no padding).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    /// Window size.
    pub kernel: (usize, usize),
    /// Step between windows.
    pub stride: (usize, usize),
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.kernel, self.stride, (0, 0))
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        Vec::new()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        Vec::new()
    }
}

/// Layers applied in order; parameters are named `"{index}.{name}"` as in PyTorch.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module + Send + Sync>>,
}

impl Sequential {
    /// An empty chain.
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// The chain with `layer` appended.
    pub fn push(mut self, layer: impl Module + Send + Sync + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        Ok(h)
    }

    fn parameters(&self) -> Vec<(String, &Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&i.to_string(), l.parameters()))
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&i.to_string(), l.parameters_mut()))
            .collect()
    }

    fn set_training(&mut self, training: bool) {
        for l in &mut self.layers {
            l.set_training(training);
        }
    }
}
