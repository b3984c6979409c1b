//! Checkpoints: a model's parameters, its optimizer's state and the caller's progress (epoch,
//! step, random-number state) in one safetensors file, so that training resumes, on the same
//! device or another, exactly where it stopped.
//!
//! Layout: each parameter under its own name (so [`Module::load_safetensors`] reads a
//! checkpoint as a weights file), each optimizer tensor under `optimizer.<name>`, and in the
//! file's metadata the optimizer's scalars under `optimizer.<key>` and the caller's values
//! under `progress.<key>`.

use super::Module;
use super::optim::Optimizer;
use super::weights;
use crate::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What an optimizer must save to continue as if it had never stopped: its tensors (moments,
/// momentum buffers; named by parameter position, `"3.m"`) and scalars (its kind, the step
/// count) as text.
#[derive(Debug, Clone, Default)]
pub struct OptimizerState {
    /// State tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// Scalars by name, as text.
    pub values: BTreeMap<String, String>,
}

impl OptimizerState {
    /// The scalar `key`, parsed; `Error::Checkpoint` naming it if it is missing or malformed.
    pub fn value<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let text = self.values.get(key).ok_or_else(|| Error::Checkpoint {
            name: format!("optimizer.{key}"),
            reason: "missing from the checkpoint".into(),
        })?;
        text.parse().map_err(|_| Error::Checkpoint {
            name: format!("optimizer.{key}"),
            reason: format!("{text:?} is not a valid value"),
        })
    }

    /// Checks that the state was saved by an optimizer of kind `kind`.
    pub fn expect_kind(&self, kind: &str) -> Result<()> {
        let found: String = self.value("kind")?;
        if found == kind {
            Ok(())
        } else {
            Err(Error::Checkpoint {
                name: "optimizer.kind".into(),
                reason: format!("the checkpoint holds a {found} optimizer's state, not {kind}'s"),
            })
        }
    }

    /// The state tensor `name` for parameter `param`, moved to the parameter's device, if the
    /// checkpoint has it; `Error::Checkpoint` if its shape is not the parameter's.
    pub fn tensor_for(&self, name: &str, param: &Tensor) -> Result<Option<Tensor>> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        if t.shape() != param.shape() {
            return Err(Error::Checkpoint {
                name: format!("optimizer.{name}"),
                reason: format!(
                    "shape {:?} in the checkpoint, {:?} for the parameter",
                    t.shape(),
                    param.shape()
                ),
            });
        }
        t.to_device(param.device()).map(Some)
    }

    /// Checks that no state tensor belongs to a parameter position at or past `params`
    /// (a checkpoint of a larger model), given names of the form `<position>.<what>`.
    pub fn check_positions(&self, params: usize) -> Result<()> {
        for name in self.tensors.keys() {
            let pos = name.split('.').next().and_then(|p| p.parse::<usize>().ok());
            if pos.is_none_or(|p| p >= params) {
                return Err(Error::Checkpoint {
                    name: format!("optimizer.{name}"),
                    reason: format!("belongs to no parameter of this model ({params} parameters)"),
                });
            }
        }
        Ok(())
    }
}

/// Writes `model`'s parameters, `opt`'s state and `progress` (the caller's values: epoch, step,
/// seeds) to one safetensors file. Values are read back from their devices.
pub fn save_checkpoint(
    path: &Path,
    model: &dyn Module,
    opt: &dyn Optimizer,
    progress: &[(&str, String)],
) -> Result<()> {
    let state = opt.state();
    let mut tensors = model.parameters();
    let optim: Vec<(String, &Tensor)> = state
        .tensors
        .iter()
        .map(|(n, t)| (format!("optimizer.{n}"), t))
        .collect();
    tensors.extend(optim);
    let mut meta: HashMap<String, String> = state
        .values
        .iter()
        .map(|(k, v)| (format!("optimizer.{k}"), v.clone()))
        .collect();
    meta.extend(
        progress
            .iter()
            .map(|(k, v)| (format!("progress.{k}"), v.clone())),
    );
    weights::save_with_metadata(path, &tensors, meta)
}

/// Reads a checkpoint written by [`save_checkpoint`] into `model` (each parameter onto the
/// device it is on now) and `opt` (its state onto its parameters' devices), and returns the
/// caller's progress values. All or nothing: on any error (a missing or misshapen tensor,
/// another optimizer's state, a malformed file) neither the model nor the optimizer changes.
pub fn load_checkpoint(
    path: &Path,
    model: &mut dyn Module,
    opt: &mut dyn Optimizer,
) -> Result<BTreeMap<String, String>> {
    let bytes = weights::read(path)?;
    let file = weights::parse(path, &bytes)?;
    let mut params = model.parameters_mut();
    let loaded = {
        let wanted: Vec<(String, &Tensor)> =
            params.iter().map(|(n, t)| (n.clone(), &**t)).collect();
        weights::matching(path, &file, &wanted)?
    };
    let meta = file.metadata.unwrap_or_default();
    let mut state = OptimizerState::default();
    for (name, view) in &file.tensors {
        if let Some(rest) = name.strip_prefix("optimizer.") {
            let t = weights::to_tensor(&Device::cpu(), name, view)?;
            state.tensors.insert(rest.to_string(), t);
        }
    }
    let mut progress = BTreeMap::new();
    for (k, v) in meta {
        if let Some(rest) = k.strip_prefix("optimizer.") {
            state.values.insert(rest.to_string(), v);
        } else if let Some(rest) = k.strip_prefix("progress.") {
            progress.insert(rest.to_string(), v);
        }
    }
    {
        let refs: Vec<&Tensor> = loaded.iter().collect();
        opt.load_state(&state, &refs)?;
    }
    for ((_, p), value) in params.iter_mut().zip(loaded) {
        **p = if p.requires_grad() {
            value.with_grad()?
        } else {
            value
        };
    }
    log::info!("resumed from {}", path.display());
    Ok(progress)
}
