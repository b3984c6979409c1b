//! Element types.

use std::fmt;

/// The element type of a tensor. Arithmetic is f32; u32 tensors hold indices (for
/// `index_select` and `embedding`) and the results of `argmax`, and support the layout ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 32-bit unsigned integer.
    U32,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
        })
    }
}
