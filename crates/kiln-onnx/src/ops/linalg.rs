//! Matrix products: `MatMul` and `Gemm`.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;

pub(super) fn matmul(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (a, b) = (ctx.float_input(args, 0)?, ctx.float_input(args, 1)?);
    // numpy's matmul: a 1-D left operand is a row, a 1-D right one a column, dropped after.
    let a2 = if a.rank() == 1 {
        a.reshape(&[1, a.numel()])?
    } else {
        a.clone()
    };
    let b2 = if b.rank() == 1 {
        b.reshape(&[b.numel(), 1])?
    } else {
        b.clone()
    };
    let y = a2.matmul(&b2)?;
    let mut dims = y.shape().to_vec();
    if b.rank() == 1 {
        dims.pop();
    }
    if a.rank() == 1 {
        dims.remove(dims.len() - usize::from(b.rank() != 1) - 1);
    }
    Ok(vec![Value::Float(y.reshape(&dims)?)])
}

pub(super) fn gemm(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (a, b) = (ctx.float_input(args, 0)?, ctx.float_input(args, 1)?);
    let (alpha, beta) = (ctx.float("alpha", 1.0), ctx.float("beta", 1.0));
    let mut y = a.matmul_transposed(b, ctx.int("transA", 0) != 0, ctx.int("transB", 0) != 0)?;
    if alpha != 1.0 {
        y = y.mul_scalar(alpha)?;
    }
    if let Some(c) = args.get(2).and_then(Option::as_ref) {
        let c = c.float_on(ctx.dev)?;
        y = y.add(&if beta == 1.0 { c } else { c.mul_scalar(beta)? })?;
    }
    Ok(vec![Value::Float(y)])
}
