//! ONNX `Einsum` for one or two operands without ellipses or repeated indices: sums over the
//! indices the output drops, then one batched matmul for the contraction, then a permutation.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;
use kiln::Tensor;

/// `t` summed over the axes whose letters `keep` rejects, with its remaining letters.
fn sum_out(
    t: &Tensor,
    letters: &[char],
    keep: impl Fn(char) -> bool,
) -> Result<(Tensor, Vec<char>)> {
    let mut t = t.clone();
    let mut kept = letters.to_vec();
    for axis in (0..letters.len()).rev() {
        if !keep(letters[axis]) {
            t = t.sum(axis as isize, false)?;
            kept.remove(axis);
        }
    }
    Ok((t, kept))
}

/// `t` (with `letters`) permuted to the order of `want`.
fn arrange(t: &Tensor, letters: &[char], want: &[char]) -> Result<Tensor> {
    let perm: Vec<usize> = want
        .iter()
        .map(|c| {
            letters
                .iter()
                .position(|l| l == c)
                .expect("a letter of the operand")
        })
        .collect();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        Ok(t.clone())
    } else {
        t.permute(&perm)
    }
}

pub(super) fn einsum(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let eq: String = ctx
        .string("equation", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if eq.contains("...") {
        return Err(ctx.unsupported("ellipses in the equation"));
    }
    let (lhs, out) = match eq.split_once("->") {
        Some((l, o)) => (l.to_string(), Some(o.to_string())),
        None => (eq.clone(), None),
    };
    let specs: Vec<Vec<char>> = lhs.split(',').map(|s| s.chars().collect()).collect();
    let inputs: Vec<&Tensor> = (0..specs.len())
        .map(|i| ctx.float_input(args, i))
        .collect::<Result<_>>()?;
    for (s, t) in specs.iter().zip(&inputs) {
        if s.len() != t.rank() || s.iter().any(|c| !c.is_ascii_alphabetic()) {
            return Err(ctx.invalid(format!(
                "`{}` for an operand of rank {}",
                s.iter().collect::<String>(),
                t.rank()
            )));
        }
        let mut u = s.clone();
        u.sort_unstable();
        u.dedup();
        if u.len() != s.len() {
            return Err(ctx.unsupported("a repeated index within one operand (a diagonal)"));
        }
    }
    let count = |c: char| specs.iter().flatten().filter(|&&x| x == c).count();
    let out: Vec<char> = match out {
        Some(o) => o.chars().collect(),
        None => {
            let mut o: Vec<char> = specs
                .iter()
                .flatten()
                .copied()
                .filter(|&c| count(c) == 1)
                .collect();
            o.sort_unstable();
            o
        }
    };
    let size = |c: char| -> Option<usize> {
        specs
            .iter()
            .zip(&inputs)
            .find_map(|(s, t)| s.iter().position(|&x| x == c).map(|i| t.shape()[i]))
    };
    let y = match inputs.len() {
        1 => {
            let (t, letters) = sum_out(inputs[0], &specs[0], |c| out.contains(&c))?;
            arrange(&t, &letters, &out)?
        }
        2 => {
            let (a_spec, b_spec) = (&specs[0], &specs[1]);
            let in_b = |c: &char| b_spec.contains(c);
            let in_a = |c: &char| a_spec.contains(c);
            let (a, al) = sum_out(inputs[0], a_spec, |c| out.contains(&c) || in_b(&c))?;
            let (b, bl) = sum_out(inputs[1], b_spec, |c| out.contains(&c) || in_a(&c))?;
            let batch: Vec<char> = al
                .iter()
                .copied()
                .filter(|c| bl.contains(c) && out.contains(c))
                .collect();
            let contr: Vec<char> = al
                .iter()
                .copied()
                .filter(|c| bl.contains(c) && !out.contains(c))
                .collect();
            let free_a: Vec<char> = al.iter().copied().filter(|c| !bl.contains(c)).collect();
            let free_b: Vec<char> = bl.iter().copied().filter(|c| !al.contains(c)).collect();
            for c in batch.iter().chain(&contr) {
                let (da, db) = (
                    a.shape()[al.iter().position(|x| x == c).unwrap_or(0)],
                    b.shape()[bl.iter().position(|x| x == c).unwrap_or(0)],
                );
                if da != db {
                    return Err(ctx.invalid(format!(
                        "index {c} is {da} in one operand and {db} in the other"
                    )));
                }
            }
            let prod = |cs: &[char]| cs.iter().map(|&c| size(c).unwrap_or(1)).product::<usize>();
            let a_order: Vec<char> = batch.iter().chain(&free_a).chain(&contr).copied().collect();
            let b_order: Vec<char> = batch.iter().chain(&contr).chain(&free_b).copied().collect();
            let a3 = arrange(&a, &al, &a_order)?.reshape(&[
                prod(&batch),
                prod(&free_a),
                prod(&contr),
            ])?;
            let b3 = arrange(&b, &bl, &b_order)?.reshape(&[
                prod(&batch),
                prod(&contr),
                prod(&free_b),
            ])?;
            let letters: Vec<char> = batch
                .iter()
                .chain(&free_a)
                .chain(&free_b)
                .copied()
                .collect();
            let dims: Vec<usize> = letters.iter().map(|&c| size(c).unwrap_or(1)).collect();
            let y = a3.matmul(&b3)?.reshape(&dims)?;
            arrange(&y, &letters, &out)?
        }
        n => return Err(ctx.unsupported(format!("{n} operands (one or two)"))),
    };
    Ok(vec![Value::Float(y)])
}
