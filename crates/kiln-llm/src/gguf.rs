//! GGUF files (llama.cpp's format, versions 2 and 3): the metadata, the tensor directory, and
//! each tensor's bytes read from a memory map and uploaded as they are (GGUF's block layouts are
//! kiln's [`DType`]s), so a model never exists twice in host memory.
//!
//! Every count, length and offset is checked against the file before it is used: a truncated
//! or damaged file gives [`Error::Format`] with the byte where reading stopped, never a panic or
//! an allocation the file cannot back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use kiln::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an f64, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// ggml's tensor types: (id, name, values per block, bytes per block). Types kiln stores are
/// mapped by [`kiln_dtype`]; the others are listed so a file that holds them still parses and
/// names them when one is asked for.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

/// The kiln storage type of a ggml type id, where kiln has one.
pub fn kiln_dtype(ggml_type: u32) -> Option<DType> {
    Some(match ggml_type {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        8 => DType::Q8_0,
        12 => DType::Q4K,
        14 => DType::Q6K,
        24 => DType::I8,
        26 => DType::I32,
        30 => DType::BF16,
        _ => return None,
    })
}

/// The name of a ggml type id (`"Q4_K"`), or `"type N"` for one this crate does not know.
pub fn ggml_type_name(ggml_type: u32) -> String {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == ggml_type)
        .map_or_else(|| format!("type {ggml_type}"), |t| t.1.to_string())
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its shape in row-major order (GGUF's `ne` reversed: `[rows, row length]`).
    pub shape: Vec<usize>,
    /// ggml's type id.
    pub ggml_type: u32,
    /// Where its bytes start in the file.
    pub offset: usize,
    /// How many bytes it takes.
    pub len: usize,
}

impl TensorInfo {
    /// The kiln storage type of this tensor, where kiln has one.
    pub fn dtype(&self) -> Option<DType> {
        kiln_dtype(self.ggml_type)
    }
}

enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open GGUF file: its metadata and tensor directory parsed, its data mapped.
pub struct Gguf {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor directory, in file order.
    pub tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    bytes: Bytes,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Opens and parses a GGUF file, mapping it into memory (nothing is read twice: tensors are
    /// copied from the map straight into device storage by [`Gguf::tensor`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed under a running model gives wrong
        // values, as with any reader of a file, but no memory unsafety in safe code that only
        // copies bytes out of it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Bytes::Map(map))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Gguf> {
        let mut r = Reader { b: &bytes, pos: 0 };
        let magic = r.take(4)?;
        if magic != b"GGUF" {
            return Err(r.err(0, "not a GGUF file (the magic is not `GGUF`)"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.err(4, &format!("version {version}; versions 2 and 3 are read")));
        }
        let n_tensors = r.count(8 + 8)?;
        let n_kv = r.count(8 + 4)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 16 => a as usize,
                _ => {
                    return Err(r.err(
                        r.pos,
                        &format!("general.alignment {v:?} is not a power of two"),
                    ));
                }
            },
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let at = r.pos;
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.err(
                    at,
                    &format!("tensor `{name}` has {n_dims} dimensions (1 to 4)"),
                ));
            }
            let mut ne = Vec::with_capacity(4);
            for _ in 0..n_dims {
                ne.push(r.u64()?);
            }
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            let numel = ne
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n < 1 << 48)
                .ok_or_else(|| {
                    r.err(at, &format!("tensor `{name}`: dimensions {ne:?} overflow"))
                })?;
            let &(_, tname, block, size) = GGML_TYPES
                .iter()
                .find(|t| t.0 == ggml_type)
                .ok_or_else(|| {
                    r.err(
                        at,
                        &format!("tensor `{name}` has unknown ggml type {ggml_type}"),
                    )
                })?;
            if ne[0] % block != 0 {
                return Err(r.err(
                    at,
                    &format!("tensor `{name}`: rows of {} values are not whole {tname} blocks of {block}", ne[0]),
                ));
            }
            if offset % alignment as u64 != 0 {
                return Err(r.err(
                    at,
                    &format!("tensor `{name}`: offset {offset} is not aligned to {alignment}"),
                ));
            }
            infos.push((name, ne, ggml_type, offset, numel / block * size));
        }
        let data = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut index = HashMap::with_capacity(infos.len());
        for (name, ne, ggml_type, offset, len) in infos {
            let start = (data as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len));
            match end {
                Some(end) if end <= bytes.len() as u64 => {}
                _ => {
                    return Err(Error::Format {
                        at: bytes.len() as u64,
                        reason: format!(
                            "tensor `{name}` ({len} bytes at data offset {offset}) runs past the end of the file: truncated?"
                        ),
                    });
                }
            }
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(Error::Format {
                    at: data as u64,
                    reason: format!("tensor `{name}` appears twice"),
                });
            }
            tensors.push(TensorInfo {
                name,
                shape: ne.iter().rev().map(|&d| d as usize).collect(),
                ggml_type,
                offset: data + offset as usize,
                len: len as usize,
            });
        }
        log::debug!(
            "gguf v{version}: {} metadata keys, {} tensors, data at {data}",
            metadata.len(),
            tensors.len()
        );
        Ok(Gguf {
            version,
            metadata,
            tensors,
            index,
            bytes,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.required(key, "an unsigned integer", Value::as_u64)
    }

    /// A required number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.required(key, "a number", Value::as_f64)
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str> {
        self.required(key, "a string", Value::as_str)
    }

    /// A required array.
    pub fn array(&self, key: &str) -> Result<&[Value]> {
        self.required(key, "an array", Value::as_array)
    }

    fn required<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<T> {
        let v = self.get(key).ok_or_else(|| Error::Metadata {
            key: key.into(),
            reason: "missing".into(),
        })?;
        f(v).ok_or_else(|| Error::Metadata {
            key: key.into(),
            reason: format!("expected {what}, got {v:?}"),
        })
    }

    /// The directory entry of a tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes, as they are in the file.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self
            .info(name)
            .ok_or_else(|| Error::MissingTensor(name.into()))?;
        Ok(&self.bytes[info.offset..info.offset + info.len])
    }

    /// A tensor on `device`, in its storage type (a quantized or f16 weight stays packed and is
    /// decoded in registers by `linear` and `embedding`). A type kiln does not store gives
    /// [`Error::BadTensor`] naming it.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self
            .info(name)
            .ok_or_else(|| Error::MissingTensor(name.into()))?;
        let dtype = info.dtype().ok_or_else(|| Error::BadTensor {
            name: name.into(),
            reason: format!(
                "ggml type {} is not one kiln stores (f32, f16, bf16, q8_0, q4_0, q4_K, q6_K, i8, i32)",
                ggml_type_name(info.ggml_type)
            ),
        })?;
        let bytes = &self.bytes[info.offset..info.offset + info.len];
        let tensor = Tensor::from_bytes(device, bytes, dtype, &info.shape)?;
        self.release(info.offset, info.len);
        Ok(tensor)
    }

    /// Several 2-D tensors stacked by rows into one `[Σ rows, columns]` tensor on `device`
    /// (a model's q, k and v weights, whose products with one input then run as one), read
    /// straight from the file into the tensor's storage; `None` where their types or columns
    /// differ. Errors as [`Gguf::tensor`].
    pub fn stacked(&self, names: &[&str], device: &Device) -> Result<Option<Tensor>> {
        let mut infos = Vec::with_capacity(names.len());
        for &name in names {
            infos.push(
                self.info(name)
                    .ok_or_else(|| Error::MissingTensor(name.into()))?,
            );
        }
        let Some(first) = infos.first() else {
            return Ok(None);
        };
        let cols = first.shape.get(1).copied();
        if infos.iter().any(|i| {
            i.ggml_type != first.ggml_type || i.shape.len() != 2 || i.shape.get(1).copied() != cols
        }) {
            return Ok(None);
        }
        let dtype = first.dtype().ok_or_else(|| Error::BadTensor {
            name: names[0].into(),
            reason: format!(
                "ggml type {} is not one kiln stores",
                ggml_type_name(first.ggml_type)
            ),
        })?;
        let mut bytes = Vec::with_capacity(infos.iter().map(|i| i.len).sum());
        for i in &infos {
            bytes.extend_from_slice(&self.bytes[i.offset..i.offset + i.len]);
        }
        let rows = infos.iter().map(|i| i.shape[0]).sum::<usize>();
        let tensor = Tensor::from_byte_vec(device, bytes, dtype, &[rows, cols.unwrap_or(0)])?;
        for i in &infos {
            self.release(i.offset, i.len);
        }
        Ok(Some(tensor))
    }

    /// Hands a mapped range's pages back to the kernel once its tensor has been copied into
    /// device storage, so a loaded model is resident once (its storage), not twice (storage and
    /// the file's pages). Reading the range again faults it back in from the file.
    fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        if let Bytes::Map(map) = &self.bytes {
            // SAFETY: the map is a read-only file mapping: after MADV_DONTNEED its pages read
            // back from the file, unchanged, so no reference into it sees different bytes.
            let dropped = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
            if let Err(e) = dropped {
                log::debug!("gguf: madvise(DONTNEED) failed: {e}");
            }
        }
        #[cfg(not(unix))]
        let _ = (offset, len);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn err(&self, at: usize, reason: &str) -> Error {
        Error::Format {
            at: at as u64,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.b.len() => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.err(
                self.pos,
                &format!(
                    "{n} more bytes needed, {} left: truncated?",
                    self.b.len() - self.pos
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items that take at least `min_bytes` each: refused when the rest of the file
    /// could not hold them, so no allocation exceeds what the file backs.
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let left = (self.b.len() - self.pos) as u64;
        if n > left / min_bytes.max(1) as u64 {
            return Err(self.err(
                at,
                &format!("a count of {n} cannot fit in the {left} bytes left"),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let n = self.count(1)?;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err(at, "a string is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(self.pos - 1, &format!("bool byte {b}"))),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.err(self.pos, "arrays nested more than 3 deep"));
                }
                let inner = self.u32()?;
                let n = self.count(1)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(self.err(self.pos - 4, &format!("unknown metadata type {t}"))),
        })
    }
}
