//! safetensors I/O: named f32 tensors to and from a file.

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

/// Writes named tensors (f32) to a safetensors file. Values are read back from their devices.
pub fn save(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    save_with_metadata(path, tensors, HashMap::new())
}

/// [`save`] with text metadata in the file's header.
pub(crate) fn save_with_metadata(
    path: &Path,
    tensors: &[(String, &Tensor)],
    meta: HashMap<String, String>,
) -> Result<()> {
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let values = t.to_vec()?;
        bytes.push((
            name.clone(),
            t.shape().to_vec(),
            bytemuck::cast_slice(&values).to_vec(),
        ));
    }
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
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
    if view.dtype() != Dtype::F32 {
        return Err(Error::Checkpoint {
            name: name.to_string(),
            reason: format!("the file stores {:?}; kiln loads F32", view.dtype()),
        });
    }
    // The file's bytes need not be 4-byte aligned: decode each value.
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor::from_vec(device, values, view.shape())
}

/// Reads every tensor of a safetensors file (f32) onto `device`, by name.
pub fn load(path: &Path, device: &crate::Device) -> Result<HashMap<String, Tensor>> {
    let bytes = read(path)?;
    parse(path, &bytes)?
        .tensors
        .iter()
        .map(|(name, view)| Ok((name.clone(), to_tensor(device, name, view)?)))
        .collect()
}

/// Reads the tensors named in `wanted`, each onto the device of its model tensor, checking
/// that every name is present with the same shape and element type: all or nothing.
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
        out.push(to_tensor(model.device(), name, view)?);
    }
    Ok(out)
}
