//! The op table, shared by `tests/ops.rs` (forward values and errors on every device) and
//! `tests/grad.rs` (gradients against finite differences of the same f64 references): each op
//! names its sample inputs, its f64 reference, its tolerance and its error cases.

// Each test binary that includes the table (ops.rs, grad.rs) uses a different part of it.
#![allow(dead_code)]

use crate::common::*;
use kiln::{Device, Error, Tensor};

mod attention;
mod binary;
mod conv;
mod fourier;
mod index;
mod layout;
mod matmul;
mod norm;
mod reduce;
mod rope;
mod scan;
mod unary;

#[allow(unused_imports)]
pub use attention::*;
#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use conv::*;
#[allow(unused_imports)]
pub use index::*;
#[allow(unused_imports)]
pub use layout::*;
#[allow(unused_imports)]
pub use matmul::*;
#[allow(unused_imports)]
pub use norm::*;
#[allow(unused_imports)]
pub use reduce::*;
#[allow(unused_imports)]
pub use scan::*;
#[allow(unused_imports)]
pub use unary::*;

mod grad_spec;
#[allow(unused_imports)]
pub use grad_spec::*;

/// A reference value: shape and f64 data.
#[derive(Clone, Debug)]
pub struct Ref {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// An input that must fail: what it is, what the op returned, and a check of the error.
pub type ErrorCase = (&'static str, kiln::Result<Tensor>, fn(&Error) -> bool);

/// One sample: input shapes and values.
pub struct Sample {
    pub inputs: Vec<(Vec<usize>, Vec<f32>)>,
}

impl Sample {
    /// The inputs as f64 references, for an op's `reference` and `tol`.
    pub fn refs(&self) -> Vec<Ref> {
        self.inputs
            .iter()
            .map(|(s, v)| Ref {
                shape: s.clone(),
                data: v.iter().map(|&x| f64::from(x)).collect(),
            })
            .collect()
    }
}

pub struct OpInfo {
    pub name: &'static str,
    pub samples: fn() -> Vec<Sample>,
    pub run: fn(&[Tensor]) -> kiln::Result<Tensor>,
    pub reference: fn(&[Ref]) -> Ref,
    /// (atol, rtol) for a sample; matmul scales atol by k.
    pub tol: fn(&[Ref]) -> (f64, f64),
    /// Inputs that must fail, with a check of the error.
    pub errors: fn(&Device) -> Vec<ErrorCase>,
    /// Which inputs `tests/grad.rs` differentiates, and on which samples.
    pub grad: fn() -> Grad,
    /// The inputs that are indices: every runner makes them u32 tensors from the sample's
    /// values (see [`input`]), with the host copy `from_vec_u32` keeps, so no runner reads a
    /// device tensor back to make them (a page cannot).
    pub index_inputs: &'static [usize],
    /// The inputs given in a storage type (a packed weight): every runner encodes the sample's
    /// values on the host (kiln's quantizers, which match ggml's byte for byte) and uploads the
    /// bytes (see [`input`]), as a GGUF file's tensor arrives.
    pub packed_inputs: &'static [(usize, kiln::DType)],
}

/// Input `k` of `op` on `dev`: a u32 index tensor (the values cast) for the op's index inputs,
/// else f32.
pub fn input(
    op: &OpInfo,
    k: usize,
    dev: &Device,
    shape: &[usize],
    values: &[f32],
) -> kiln::Result<Tensor> {
    if op.index_inputs.contains(&k) {
        return Tensor::from_vec_u32(dev, values.iter().map(|&x| x as u32).collect(), shape);
    }
    if let Some(&(_, dtype)) = op.packed_inputs.iter().find(|p| p.0 == k) {
        let bytes = Tensor::from_slice(&Device::cpu(), values, shape)?
            .to_dtype(dtype)?
            .to_bytes()?;
        return Tensor::from_bytes(dev, &bytes, dtype, shape);
    }
    Tensor::from_slice(dev, values, shape)
}

/// The op table in a half-precision type (f16 or bf16), shared by `tests/ops.rs` and the page's
/// check: each entry's float inputs (not its index or packed ones) rounded to the type and
/// uploaded as its bytes, the f64 reference taken of the rounded values. The op computes in
/// f32 and rounds its result to the type once (index results stay u32), so the tolerance
/// widens by one step of the type's grid: one unit in the last place relative (the f32 result
/// and the exact one may round to neighbours) and the smallest subnormal absolute; a reference
/// past the type's range is its infinity.
pub mod half_table {
    use super::*;
    use kiln::DType;

    /// Ops whose result is f32 whatever their table's type: `embedding` decodes a table of a
    /// storage type to f32, as ggml's `get_rows` does.
    pub const DECODES_TO_F32: &[&str] = &["embedding"];
    /// Ops that refuse half tensors (`Unsupported` naming the type): `index_copy` writes f32
    /// and u32 values in place.
    pub const REFUSES_HALF: &[&str] = &["index_copy"];

    /// Whether input `k` of `op` is a float input (rounded to the half type).
    pub fn is_float(op: &OpInfo, k: usize) -> bool {
        !op.index_inputs.contains(&k) && !op.packed_inputs.iter().any(|p| p.0 == k)
    }

    /// `values` rounded to `dtype` and back (on the CPU backend).
    pub fn rounded(values: &[f32], dtype: DType) -> Vec<f32> {
        let cpu = Device::cpu();
        Tensor::from_slice(&cpu, values, &[values.len()])
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec())
            .expect("casts on the CPU backend")
    }

    /// `sample` with its float inputs rounded to `dtype`; `None` when it has none.
    pub fn sample(op: &OpInfo, sample: Sample, dtype: DType) -> Option<Sample> {
        (0..sample.inputs.len())
            .any(|k| is_float(op, k))
            .then(|| Sample {
                inputs: (sample.inputs.into_iter().enumerate())
                    .map(|(k, (s, v))| match is_float(op, k) {
                        true => {
                            let v = rounded(&v, dtype);
                            (s, v)
                        }
                        false => (s, v),
                    })
                    .collect(),
            })
    }

    /// Input `k` of a rounded sample on `dev`: a float input as `dtype`'s bytes, others as
    /// [`input`] makes them.
    pub fn input_in(
        op: &OpInfo,
        k: usize,
        dev: &Device,
        shape: &[usize],
        values: &[f32],
        dtype: DType,
    ) -> kiln::Result<Tensor> {
        if !is_float(op, k) {
            return input(op, k, dev, shape, values);
        }
        let bytes = Tensor::from_slice(&Device::cpu(), values, shape)?
            .to_dtype(dtype)?
            .to_bytes()?;
        Tensor::from_bytes(dev, &bytes, dtype, shape)
    }

    /// The type `op`'s float result must have in a half run of `dtype`.
    pub fn result_type(op: &OpInfo, dtype: DType) -> DType {
        match DECODES_TO_F32.iter().any(|n| op.name.starts_with(n)) {
            true => DType::F32,
            false => dtype,
        }
    }

    /// The reference and (atol, rtol) a half result is held to, from the op's own.
    pub fn reference(want: &Ref, dtype: DType, (atol, rtol): (f64, f64)) -> (Vec<f64>, f64, f64) {
        let (eps, tiny) = match dtype {
            DType::F16 => (2f64.powi(-10), 2f64.powi(-24)),
            _ => (2f64.powi(-7), 2f64.powi(-133)),
        };
        let wide: Vec<f32> = want.data.iter().map(|&w| w as f32).collect();
        let data = (want.data.iter().zip(rounded(&wide, dtype)))
            .map(|(&w, r)| if r.is_infinite() { f64::from(r) } else { w })
            .collect();
        (data, atol + tiny, rtol + eps)
    }
}

pub fn map_ref(x: &Ref, f: impl Fn(f64) -> f64) -> Ref {
    Ref {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

pub fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

pub fn shaped(shapes: &[&[usize]], seed: u64) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    shapes
        .iter()
        .map(|s| {
            let n = s.iter().product();
            Sample {
                inputs: vec![(s.to_vec(), rng.vec(n, -3.0, 3.0))],
            }
        })
        .collect()
}

pub fn pairs(shapes: &[(&[usize], &[usize])], seed: u64) -> Vec<Sample> {
    let mut rng = Lcg(seed);
    shapes
        .iter()
        .map(|(a, b)| {
            let (na, nb) = (a.iter().product(), b.iter().product());
            Sample {
                inputs: vec![
                    (a.to_vec(), rng.vec(na, -3.0, 3.0)),
                    (b.to_vec(), rng.vec(nb, -3.0, 3.0)),
                ],
            }
        })
        .collect()
}

pub fn no_errors(_: &Device) -> Vec<ErrorCase> {
    vec![]
}

/// Every op of the table, family by family.
pub fn table() -> Vec<OpInfo> {
    [
        unary::table(),
        attention::table(),
        reduce::table(),
        scan::table(),
        layout::table(),
        norm::table(),
        rope::table(),
        index::table(),
        conv::table(),
        fourier::table(),
        binary::table(),
        matmul::table(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
