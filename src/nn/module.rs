//! The `Module` trait: a forward pass and named parameters.

use crate::error::Result;
use crate::tensor::Tensor;
use std::path::Path;

/// A layer or a network: a forward pass over tensors and the parameters it learns, named as
/// PyTorch names them (`"weight"`, `"0.bias"`, ...), which is also how they are saved.
pub trait Module {
    /// The forward pass.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// The learned tensors, with their names.
    fn parameters(&self) -> Vec<(String, &Tensor)>;

    /// The learned tensors, mutable (for optimizers and loading), in the same order as
    /// [`Module::parameters`].
    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor)>;

    /// Switches between training (the default) and evaluation behaviour (dropout off).
    fn set_training(&mut self, _training: bool) {}

    /// Clears the gradients of every parameter.
    fn zero_grad(&mut self) {
        for (_, p) in self.parameters_mut() {
            p.zero_grad();
        }
    }

    /// Number of learned values.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, p)| p.numel()).sum()
    }

    /// Writes the parameters to a safetensors file (by name, in their element types).
    fn save_safetensors(&self, path: &Path) -> Result<()> {
        super::weights::save(path, &self.parameters())
    }

    /// Reads every parameter from a safetensors file onto the device it is on now; a missing
    /// name, another shape or an element type that is not a float where the parameter is one
    /// is `Error::Checkpoint`, and then nothing is changed. Floats stored as f16 or bf16 are
    /// converted to the parameter's type. Parameters that required gradients still do.
    fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        let mut params = self.parameters_mut();
        let loaded = {
            let wanted: Vec<(String, &Tensor)> =
                params.iter().map(|(n, t)| (n.clone(), &**t)).collect();
            super::weights::load_matching(path, &wanted)?
        };
        for ((_, p), value) in params.iter_mut().zip(loaded) {
            let value = if p.requires_grad() {
                value.with_grad()?
            } else {
                value
            };
            **p = value;
        }
        Ok(())
    }
}

/// Prefixes each name with `prefix.`.
pub(crate) fn prefixed<T>(prefix: &str, params: Vec<(String, T)>) -> Vec<(String, T)> {
    params
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect()
}
