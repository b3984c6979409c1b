//! Values flowing through an ONNX graph, and their conversion from ONNX tensors.

use super::narrow::Narrow;
use super::proto::{TensorProto, dtype};
use kiln::{Device, Tensor};
use kiln::{Error, Result};

/// An integer tensor held on the host: shapes, indices and the arithmetic on them run there,
/// as ONNX models compute them (int64 `Shape`, `Gather` on shapes, `Range`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct IntTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major, widened to i64.
    pub data: Vec<i64>,
    /// The ONNX element type (`INT64`, `INT32`, `UINT8`, ...), kept for outputs.
    pub elem: i32,
}

impl IntTensor {
    /// An int64 tensor.
    pub fn new(shape: Vec<usize>, data: Vec<i64>) -> IntTensor {
        IntTensor {
            shape,
            data,
            elem: dtype::INT64,
        }
    }
}

/// A value of an ONNX graph.
#[derive(Clone, Debug)]
pub enum Value {
    /// A float tensor on the model's device (ONNX float; float16 and double are computed in
    /// f32).
    Float(Tensor),
    /// A boolean tensor, held on the device as a 0/1 float mask (kiln's comparison results).
    Bool(Tensor),
    /// An integer tensor, on the host.
    Int(IntTensor),
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::Float(t)
    }
}

impl Value {
    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        match self {
            Value::Float(t) | Value::Bool(t) => t.shape(),
            Value::Int(i) => &i.shape,
        }
    }

    /// The values as f64, read back from the device where they live (bools as 0/1).
    pub fn to_f64(&self) -> Result<Vec<f64>> {
        match self {
            Value::Float(t) | Value::Bool(t) => {
                Ok(t.to_vec()?.into_iter().map(f64::from).collect())
            }
            Value::Int(i) => Ok(i.data.iter().map(|&v| v as f64).collect()),
        }
    }

    /// The tensor of a float (or bool) value; `what` names the input for the error.
    pub(crate) fn tensor(&self, op: &'static str) -> Result<&Tensor> {
        match self {
            Value::Float(t) | Value::Bool(t) => Ok(t),
            Value::Int(_) => Err(Error::Unsupported {
                op,
                reason: "integer tensors are host values here; this input must be float".into(),
            }),
        }
    }

    /// A float tensor on `dev` holding this value (integers converted).
    pub(crate) fn float_on(&self, dev: &Device) -> Result<Tensor> {
        match self {
            Value::Float(t) | Value::Bool(t) => Ok(t.clone()),
            Value::Int(i) => {
                Tensor::from_vec(dev, i.data.iter().map(|&v| v as f32).collect(), &i.shape)
            }
        }
    }

    /// The values as host integers (floats truncated toward zero, read back from the device).
    pub(crate) fn ints(&self) -> Result<IntTensor> {
        match self {
            Value::Int(i) => Ok(i.clone()),
            Value::Float(t) | Value::Bool(t) => Ok(IntTensor::new(
                t.shape().to_vec(),
                t.to_vec()?.into_iter().map(|v| v as i64).collect(),
            )),
        }
    }
}

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::Io {
        path: format!("tensor `{name}`"),
        reason: reason.into(),
    }
}

/// Little-endian values of `width` bytes each from `raw`, decoded by `f`.
fn from_raw<T>(raw: &[u8], width: usize, n: usize, f: impl Fn(&[u8]) -> T) -> Option<Vec<T>> {
    (raw.len() == n * width).then(|| raw.chunks_exact(width).map(f).collect())
}

/// An ONNX tensor (a `Constant`, a test's input) as a value on `dev`, exactly as stored.
pub(crate) fn from_proto(t: &TensorProto, dev: &Device) -> Result<Value> {
    decode(t, dev, false)
}

/// An initializer (a weight) as a value on `dev`, its subnormal floats made zeros of their
/// sign. Trained weights can be mostly subnormal (PP-OCRv6's detector: 63% of one 384×768
/// convolution), and x86 multiplies subnormals through a microcode assist of about a hundred
/// cycles, so that one product took 5 ms instead of 0.09. A weight below 1.2e-38 in magnitude
/// changes an output by less than that times its input: GPUs that flush subnormals (most do)
/// compute the same.
pub(crate) fn weight_from_proto(t: &TensorProto, dev: &Device) -> Result<Value> {
    decode(t, dev, true)
}

fn decode(t: &TensorProto, dev: &Device, flush: bool) -> Result<Value> {
    let name = t.name.as_str();
    if t.data_location == 1 || !t.external_data.is_empty() {
        // Initializers have been inlined by `external::inline`; a `Constant` or a test's
        // tensor file has no directory to read from.
        return Err(Error::Unsupported {
            op: "onnx",
            reason: format!("tensor `{name}` keeps its data in an external file"),
        });
    }
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| bad(name, format!("dimension {d}")))?);
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(name, format!("{shape:?} overflows")))?;
    let raw = &t.raw_data;
    let has_raw = !raw.is_empty() || n == 0;
    let wrong = |got: usize| bad(name, format!("{got} values for shape {shape:?}"));
    let floats = |mut v: Vec<f32>| -> Result<Value> {
        if v.len() != n {
            return Err(wrong(v.len()));
        }
        if flush {
            v.iter_mut()
                .filter(|x| x.is_subnormal())
                .for_each(|x| *x = 0f32.copysign(*x));
        }
        Ok(Value::Float(Tensor::from_vec(dev, v, &shape)?))
    };
    let ints = |v: Vec<i64>, elem: i32| -> Result<Value> {
        if v.len() != n {
            return Err(wrong(v.len()));
        }
        Ok(Value::Int(IntTensor {
            shape: shape.clone(),
            data: v,
            elem,
        }))
    };
    let raw_err = || bad(name, format!("{} raw bytes for shape {shape:?}", raw.len()));
    if let Some(narrow) = Narrow::of(t.data_type) {
        // Stored raw (sub-byte types packed), or one value per int32 (8- and 16-bit types),
        // or packed bytes in int32s (4- and 2-bit types).
        let patterns = if has_raw {
            narrow.unpack(raw, n).ok_or_else(raw_err)?
        } else if narrow.bits() >= 8 {
            t.int32_data.iter().map(|&v| v as u32).collect()
        } else {
            let bytes: Vec<u8> = t.int32_data.iter().map(|&v| v as u8).collect();
            narrow.unpack(&bytes, n).ok_or_else(raw_err)?
        };
        let values: Vec<f64> = patterns.into_iter().map(|p| narrow.decode(p)).collect();
        return if narrow.is_int() {
            ints(values.into_iter().map(|v| v as i64).collect(), t.data_type)
        } else {
            floats(values.into_iter().map(|v| v as f32).collect())
        };
    }
    match t.data_type {
        dtype::FLOAT => floats(if has_raw {
            from_raw(raw, 4, n, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(raw_err)?
        } else {
            t.float_data.clone()
        }),
        dtype::DOUBLE => floats(if has_raw {
            from_raw(raw, 8, n, |b| {
                f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            })
            .ok_or_else(raw_err)?
        } else {
            t.double_data.iter().map(|&v| v as f32).collect()
        }),
        dtype::FLOAT16 => floats(if has_raw {
            from_raw(raw, 2, n, |b| {
                half::f16::from_le_bytes([b[0], b[1]]).to_f32()
            })
            .ok_or_else(raw_err)?
        } else {
            t.int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16).to_f32())
                .collect()
        }),
        dtype::BOOL => {
            let v: Vec<f32> = if has_raw {
                from_raw(raw, 1, n, |b| f32::from(u8::from(b[0] != 0))).ok_or_else(raw_err)?
            } else {
                t.int32_data
                    .iter()
                    .map(|&v| f32::from(u8::from(v != 0)))
                    .collect()
            };
            if v.len() != n {
                return Err(wrong(v.len()));
            }
            Ok(Value::Bool(Tensor::from_vec(dev, v, &shape)?))
        }
        dtype::INT64 => ints(
            if has_raw {
                from_raw(raw, 8, n, |b| {
                    i64::from_le_bytes(b.try_into().expect("8 bytes"))
                })
                .ok_or_else(raw_err)?
            } else {
                t.int64_data.clone()
            },
            dtype::INT64,
        ),
        e @ (dtype::INT32 | dtype::INT16 | dtype::INT8 | dtype::UINT16 | dtype::UINT8) => {
            let width = match e {
                dtype::INT32 => 4,
                dtype::INT16 | dtype::UINT16 => 2,
                _ => 1,
            };
            let v = if has_raw {
                from_raw(raw, width, n, |b| match e {
                    dtype::INT32 => i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    dtype::INT16 => i64::from(i16::from_le_bytes([b[0], b[1]])),
                    dtype::UINT16 => i64::from(u16::from_le_bytes([b[0], b[1]])),
                    dtype::INT8 => i64::from(b[0] as i8),
                    _ => i64::from(b[0]),
                })
                .ok_or_else(raw_err)?
            } else {
                t.int32_data.iter().map(|&v| i64::from(v)).collect()
            };
            ints(v, e)
        }
        e @ (dtype::UINT32 | dtype::UINT64) => {
            let width = if e == dtype::UINT32 { 4 } else { 8 };
            let v = if has_raw {
                from_raw(raw, width, n, |b| {
                    let mut w = [0u8; 8];
                    w[..b.len()].copy_from_slice(b);
                    u64::from_le_bytes(w) as i64
                })
                .ok_or_else(raw_err)?
            } else {
                t.uint64_data.iter().map(|&v| v as i64).collect()
            };
            ints(v, e)
        }
        other => Err(Error::Unsupported {
            op: "onnx",
            reason: format!("tensor `{name}` has element type {other} (string, complex, ...)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight's subnormals become zeros of their sign, stored raw or in `float_data`; a
    /// `Constant` or an input keeps them; other values (NaN included) are untouched.
    #[test]
    fn weights_lose_their_subnormals_inputs_keep_them() {
        let dev = Device::cpu();
        let values = [1.5f32, -1e-39, 1e-45, f32::MIN_POSITIVE, -0.0, f32::NAN];
        let raw = TensorProto {
            dims: vec![6],
            data_type: dtype::FLOAT,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        };
        let listed = TensorProto {
            raw_data: Vec::new(),
            float_data: values.to_vec(),
            ..raw.clone()
        };
        let bits = |v: Value| match v {
            Value::Float(t) => t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect(),
            _ => panic!("not a float tensor"),
        };
        let flushed = [1.5f32, -0.0, 0.0, f32::MIN_POSITIVE, -0.0, f32::NAN];
        for t in [&raw, &listed] {
            let w: Vec<u32> = bits(weight_from_proto(t, &dev).unwrap());
            assert_eq!(w, flushed.map(f32::to_bits));
            let x: Vec<u32> = bits(from_proto(t, &dev).unwrap());
            assert_eq!(x, values.map(f32::to_bits));
        }
    }
}
