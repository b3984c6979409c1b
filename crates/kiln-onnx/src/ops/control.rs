//! Control flow: `If`, whose condition is read when the node runs (a value known at load, such
//! as a constant, is simply known by then); the chosen branch runs as a subgraph that sees the
//! enclosing graph's values.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;

/// `If`: the `then_branch` subgraph's outputs when the one-element condition is true, else
/// the `else_branch`'s.
pub(super) fn if_(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let cond = ctx.input(args, 0)?.to_f64()?;
    let [c] = cond[..] else {
        return Err(ctx.invalid(format!(
            "the condition must hold one value, not {}",
            cond.len()
        )));
    };
    let branch = if c != 0.0 {
        "then_branch"
    } else {
        "else_branch"
    };
    let graph = ctx
        .node
        .attribute
        .iter()
        .find(|a| a.name == branch)
        .and_then(|a| a.g.as_ref())
        .ok_or_else(|| ctx.invalid(format!("no {branch} graph")))?;
    let out = (ctx.subgraph)(graph)?;
    if out.len() != ctx.node.output.len() {
        return Err(ctx.invalid(format!(
            "{branch} makes {} outputs for the node's {}",
            out.len(),
            ctx.node.output.len()
        )));
    }
    Ok(out)
}
