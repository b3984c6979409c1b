//! safetensors I/O: named tensors to and from a file, each in its own element type (f32, f16,
//! bf16, i8, u8, i32, u32).

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The safetensors element type of `dtype`, where the format has one (not GGUF's blocks).
fn file_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F32 => Dtype::F32,
        DType::U32 => Dtype::U32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::I32 => Dtype::I32,
        _ => return None,
    })
}

/// kiln's element type for a safetensors one, where kiln has it.
fn kiln_dtype(dtype: Dtype) -> Option<DType> {
    DType::ALL
        .into_iter()
        .find(|&d| file_dtype(d) == Some(dtype))
}

/// Writes named tensors to a safetensors file, each in its own element type (f32, f16, bf16,
/// i8, u8, i32, u32; GGUF's block types have no safetensors form: `Unsupported`). Values are
/// read back from their devices.
pub fn save(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    save_with_metadata(path, tensors, HashMap::new())
}

/// [`save`] with text metadata in the file's header.
pub(crate) fn save_with_metadata(
    path: &Path,
    tensors: &[(String, &Tensor)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = file_dtype(t.dtype()).ok_or_else(|| Error::Unsupported {
            op: "save",
            reason: format!("safetensors has no {} type (tensor {name})", t.dtype()),
        })?;
        bytes.push((name.clone(), dtype, t.shape().to_vec(), t.to_bytes()?));
    }
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| io(path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = (!meta.is_empty()).then_some(meta);
    safetensors::serialize_to_file(views, meta, path).map_err(|e| io(path, e))?;
    log::info!("saved {} tensors to {}", tensors.len(), path.display());
    Ok(())
}

/// A file's bytes.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io(path, e))
}

/// The tensors and metadata of a safetensors file, every header entry checked.
pub(crate) struct Parsed<'a> {
    pub(crate) tensors: HashMap<String, TensorView<'a>>,
    pub(crate) metadata: Option<HashMap<String, String>>,
}

/// Parse a safetensors file's bytes; anything malformed is `Error::Io`.
pub(crate) fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<Parsed<'a>> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| io(path, e))?;
    let metadata = header.metadata().clone();
    let file = SafeTensors::deserialize(bytes).map_err(|e| io(path, e))?;
    Ok(Parsed {
        tensors: file.tensors().into_iter().collect(),
        metadata,
    })
}

pub(crate) fn to_tensor(
    device: &crate::Device,
    name: &str,
    view: &TensorView<'_>,
) -> Result<Tensor> {
    let dtype = kiln_dtype(view.dtype()).ok_or_else(|| Error::Checkpoint {
        name: name.to_string(),
        reason: format!(
            "the file stores {:?}; kiln loads F32, F16, BF16, I8, U8, I32 and U32",
            view.dtype()
        ),
    })?;
    Tensor::from_bytes(device, view.data(), dtype, view.shape())
}

/// Reads every tensor of a safetensors file onto `device`, by name, each in its stored element
/// type (f16 and bf16 stay half-precision: `Tensor::to_dtype` converts).
pub fn load(path: &Path, device: &crate::Device) -> Result<HashMap<String, Tensor>> {
    let bytes = read(path)?;
    parse(path, &bytes)?
        .tensors
        .iter()
        .map(|(name, view)| Ok((name.clone(), to_tensor(device, name, view)?)))
        .collect()
}

/// Reads the tensors named in `wanted`, each onto the device of its model tensor, checking
/// that every name is present with the same shape: all or nothing. A float stored in another
/// float type (an f16 or bf16 checkpoint for f32 parameters) is converted to the model's.
pub(crate) fn load_matching(path: &Path, wanted: &[(String, &Tensor)]) -> Result<Vec<Tensor>> {
    let bytes = read(path)?;
    matching(path, &parse(path, &bytes)?, wanted)
}

/// [`load_matching`] over a parsed file.
pub(crate) fn matching(
    path: &Path,
    file: &Parsed<'_>,
    wanted: &[(String, &Tensor)],
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(wanted.len());
    for (name, model) in wanted {
        let view = file.tensors.get(name).ok_or_else(|| Error::Checkpoint {
            name: name.clone(),
            reason: format!("missing from {}", path.display()),
        })?;
        if view.shape() != model.shape() {
            return Err(Error::Checkpoint {
                name: name.clone(),
                reason: format!(
                    "shape {:?} in {}, {:?} in the model",
                    view.shape(),
                    path.display(),
                    model.shape()
                ),
            });
        }
        let t = to_tensor(model.device(), name, view)?;
        let floats = [DType::F32, DType::F16, DType::BF16];
        let t = match (t.dtype(), model.dtype()) {
            (a, b) if a == b => t,
            (a, b) if floats.contains(&a) && floats.contains(&b) => t.to_dtype(b)?,
            (a, b) => {
                return Err(Error::Checkpoint {
                    name: name.clone(),
                    reason: format!("{a} in {}, {b} in the model", path.display()),
                });
            }
        };
        out.push(t);
    }
    Ok(out)
}
