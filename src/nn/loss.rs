//! Loss functions, composed from tracked ops so that backward comes with them.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Mean cross-entropy of `logits` (`[batch, classes]`) against integer class `targets` (a u32
/// tensor of shape `[batch]`): `-mean(log_softmax(logits)[i, targets[i]])`, a scalar, computed
/// stably (logsumexp) by one fused kernel, whose backward is one kernel too. A target outside
/// `0..classes` is `Error::IndexOutOfRange`, checked on the host: free for targets made with
/// `from_vec_u32`, one read-back for targets computed on a GPU.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if let Some(r) = Tensor::via_f32(&[logits], |t| cross_entropy(&t[0], targets)) {
        return r;
    }
    if targets.dtype() != DType::U32 {
        return Err(Error::DTypeMismatch {
            op: "cross_entropy",
            expected: DType::U32,
            got: targets.dtype(),
        });
    }
    let [batch, _classes] = logits.shape()[..] else {
        return Err(Error::InvalidShape {
            op: "cross_entropy",
            reason: format!("logits must be [batch, classes], got {:?}", logits.shape()),
        });
    };
    if targets.shape() != [batch] {
        return Err(Error::ShapeMismatch {
            op: "cross_entropy",
            lhs: logits.shape().to_vec(),
            rhs: targets.shape().to_vec(),
        });
    }
    logits.expect(DType::F32, "cross_entropy")?;
    logits.same_device(targets, "cross_entropy")?;
    let classes = logits.shape()[1];
    let t = targets.checked_indices("cross_entropy", classes)?;
    logits.cross_entropy_rows(targets, t)?.mean_all()
}

/// Mean squared error between `pred` and `target` (the same shape; no broadcasting, so a
/// shape slip is an error rather than a silently wrong loss), a scalar.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if let Some(r) = Tensor::via_f32(&[pred, target], |t| mse_loss(&t[0], &t[1])) {
        return r;
    }
    if pred.shape() != target.shape() {
        return Err(Error::ShapeMismatch {
            op: "mse_loss",
            lhs: pred.shape().to_vec(),
            rhs: target.shape().to_vec(),
        });
    }
    pred.sub(target)?.square()?.mean_all()
}
