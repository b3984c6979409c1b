//! Initializers whose bytes live in external data files (ONNX's `data_location = EXTERNAL`,
//! what PyTorch writes for models over 2 GB): the bytes are read into the tensor's
//! `raw_data` before it is decoded like any other.

use super::proto::TensorProto;
use kiln::{Error, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

/// `data_location` of a tensor whose bytes are in an external file.
const EXTERNAL: i32 = 1;

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::Io {
        path: format!("tensor `{name}`"),
        reason: reason.into(),
    }
}

/// Reads `t`'s external bytes (if it has any) into `t.raw_data`, from the file its `location`
/// names relative to `dir` (`None`: the model came from bytes, not a file, so there is no
/// directory to look in: `Error::Unsupported`). The location must stay inside `dir` (no
/// absolute path, no `..`); `offset` and `length` must lie inside the file.
pub(crate) fn inline(t: &mut TensorProto, dir: Option<&Path>) -> Result<()> {
    if t.data_location != EXTERNAL && t.external_data.is_empty() {
        return Ok(());
    }
    let name = t.name.clone();
    let Some(dir) = dir else {
        return Err(Error::Unsupported {
            op: "onnx",
            reason: format!(
                "tensor `{name}` keeps its data in an external file: load the model with \
                 Model::load, from the directory that holds the file"
            ),
        });
    };
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.clone())
    };
    let number = |key: &str| -> Result<Option<u64>> {
        entry(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(&name, format!("external data {key} `{v}`")))
            })
            .transpose()
    };
    let location =
        entry("location").ok_or_else(|| bad(&name, "external data without a location"))?;
    let rel = Path::new(&location);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(
            &name,
            format!("external data location `{location}` leaves the model's directory"),
        ));
    }
    let path = dir.join(rel);
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        reason: format!("external data of tensor `{name}`: {e}"),
    };
    let mut file = std::fs::File::open(&path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let offset = number("offset")?.unwrap_or(0);
    let length = match number("length")? {
        Some(l) => l,
        None => size.saturating_sub(offset),
    };
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(bad(
            &name,
            format!(
                "external data at offset {offset}, length {length} passes the end of `{location}` ({size} bytes)"
            ),
        ));
    }
    let len = usize::try_from(length).map_err(|_| bad(&name, "external data too large"))?;
    let mut raw = Vec::new();
    raw.try_reserve_exact(len)
        .map_err(|_| bad(&name, format!("cannot hold {len} bytes of external data")))?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    file.take(length).read_to_end(&mut raw).map_err(io)?;
    t.raw_data = raw;
    t.external_data.clear();
    t.data_location = 0;
    Ok(())
}
