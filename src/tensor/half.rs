//! Half-precision operands (f16, bf16): an op computes in f32 and rounds its result back.
//!
//! Every arithmetic op takes f16 and bf16 tensors through one mechanism, [`Tensor::via_f32`]:
//! its half operands are widened to f32 on their device, the f32 op runs (accumulating in f32
//! as it always does), and a floating result is rounded to the operands' type. So a chain of
//! ops on f16 tensors keeps f16 in memory between ops and rounds once per op, as PyTorch's f16
//! tensors do. Operands of different float types meet in f32: f16 with f32, or f16 with bf16,
//! gives f32.

use super::Tensor;
use crate::dtype::DType;
use crate::error::Result;

/// Whether `dtype` is a half-precision float that the arithmetic ops take.
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

impl Tensor {
    /// For an op whose float operands are `operands`: `None` when none of them is f16 or bf16
    /// (the op runs as it is); otherwise `run` on the operands with the half ones widened to
    /// f32, and its result rounded to the half type when every operand has that one type (f32
    /// results of other types of operand, and u32 results, are returned as they are).
    pub(crate) fn via_f32(
        operands: &[&Tensor],
        run: impl FnOnce(&[Tensor]) -> Result<Tensor>,
    ) -> Option<Result<Tensor>> {
        let to = Tensor::half_of(operands)?;
        Some(Tensor::widened(operands).and_then(|wide| {
            let out = run(&wide)?;
            out.narrowed(to)
        }))
    }

    /// [`Tensor::via_f32`] for an op with optional operands (a bias, a residual).
    pub(crate) fn via_f32_opt(
        operands: &[Option<&Tensor>],
        run: impl FnOnce(&[Option<Tensor>]) -> Result<Tensor>,
    ) -> Option<Result<Tensor>> {
        let present: Vec<&Tensor> = operands.iter().flatten().copied().collect();
        let to = Tensor::half_of(&present)?;
        let wide = operands
            .iter()
            .map(|t| t.map(Tensor::widen).transpose())
            .collect::<Result<Vec<_>>>();
        Some(wide.and_then(|wide| run(&wide)?.narrowed(to)))
    }

    /// [`Tensor::via_f32`] for an op with two results.
    pub(crate) fn via_f32_pair(
        operands: &[&Tensor],
        run: impl FnOnce(&[Tensor]) -> Result<(Tensor, Tensor)>,
    ) -> Option<Result<(Tensor, Tensor)>> {
        let to = Tensor::half_of(operands)?;
        Some(Tensor::widened(operands).and_then(|wide| {
            let (a, b) = run(&wide)?;
            Ok((a.narrowed(to)?, b.narrowed(to)?))
        }))
    }

    /// `None` without a half operand; else the type results round to: the half type all the
    /// operands share, or f32 when they differ.
    fn half_of(operands: &[&Tensor]) -> Option<Option<DType>> {
        if !operands.iter().any(|t| is_half(t.dtype())) {
            return None;
        }
        let first = operands[0].dtype();
        Some(operands.iter().all(|t| t.dtype() == first).then_some(first))
    }

    fn widened(operands: &[&Tensor]) -> Result<Vec<Tensor>> {
        operands.iter().map(|t| t.widen()).collect()
    }

    /// This tensor as f32 if it is f16 or bf16, else itself.
    fn widen(&self) -> Result<Tensor> {
        if is_half(self.dtype()) {
            self.to_dtype(DType::F32)
        } else {
            Ok(self.clone())
        }
    }

    /// An f32 result rounded to `to` (when given); other results as they are.
    fn narrowed(self, to: Option<DType>) -> Result<Tensor> {
        match to {
            Some(to) if self.dtype() == DType::F32 => self.to_dtype(to),
            _ => Ok(self),
        }
    }
}
