//! ONNX `Einsum` for any number of operands: an ellipsis becomes letters of its own (its
//! dimensions aligned from the right across operands), a repeated index within one operand
//! takes that operand's diagonal, then the operands are contracted pairwise, left to right,
//! each pair summed over the indices nothing later needs and multiplied as one batched matmul,
//! and a permutation gives the output's order.

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

/// `t` (with `letters`) with every index that appears twice replaced by the diagonal along
/// it: the two axes moved last, flattened, and every `n + 1`-th value picked.
fn diagonals(ctx: &Ctx, t: &Tensor, letters: &[char]) -> Result<(Tensor, Vec<char>)> {
    let (mut t, mut letters) = (t.clone(), letters.to_vec());
    while let Some((p, q)) = (0..letters.len()).find_map(|p| {
        (p + 1..letters.len())
            .find(|&q| letters[q] == letters[p])
            .map(|q| (p, q))
    }) {
        let n = t.shape()[p];
        if t.shape()[q] != n {
            return Err(ctx.invalid(format!(
                "index {} is {n} and {} in one operand",
                letters[p],
                t.shape()[q]
            )));
        }
        let rest: Vec<usize> = (0..letters.len()).filter(|&d| d != p && d != q).collect();
        let perm: Vec<usize> = rest.iter().copied().chain([p, q]).collect();
        let mut dims: Vec<usize> = rest.iter().map(|&d| t.shape()[d]).collect();
        dims.push(n * n);
        let flat = t.permute(&perm)?.reshape(&dims)?;
        let picks = Tensor::from_vec_u32(
            ctx.dev,
            (0..n as u32).map(|i| i * (n as u32 + 1)).collect(),
            &[n],
        )?;
        t = flat.index_select(dims.len() as isize - 1, &picks)?;
        let c = letters[p];
        letters = rest.iter().map(|&d| letters[d]).chain([c]).collect();
    }
    Ok((t, letters))
}

/// The product of `a` and `b` (with their letters) over the letters they share that `keep`
/// rejects (letters of one operand alone that `keep` rejects are summed first), as one batched
/// matmul: the result's letters are the shared kept ones, then `a`'s own, then `b`'s own.
fn pair(
    ctx: &Ctx,
    (a, a_spec): (&Tensor, &[char]),
    (b, b_spec): (&Tensor, &[char]),
    keep: impl Fn(char) -> bool,
    size: &dyn Fn(char) -> Option<usize>,
) -> Result<(Tensor, Vec<char>)> {
    let (a, al) = sum_out(a, a_spec, |c| keep(c) || b_spec.contains(&c))?;
    let (b, bl) = sum_out(b, b_spec, |c| keep(c) || al.contains(&c))?;
    let batch: Vec<char> = al
        .iter()
        .copied()
        .filter(|c| bl.contains(c) && keep(*c))
        .collect();
    let contr: Vec<char> = al
        .iter()
        .copied()
        .filter(|c| bl.contains(c) && !keep(*c))
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
                "index {c} is {da} in one operand and {db} in another"
            )));
        }
    }
    let prod = |cs: &[char]| cs.iter().map(|&c| size(c).unwrap_or(1)).product::<usize>();
    let a_order: Vec<char> = batch.iter().chain(&free_a).chain(&contr).copied().collect();
    let b_order: Vec<char> = batch.iter().chain(&contr).chain(&free_b).copied().collect();
    let a3 = arrange(&a, &al, &a_order)?.reshape(&[prod(&batch), prod(&free_a), prod(&contr)])?;
    let b3 = arrange(&b, &bl, &b_order)?.reshape(&[prod(&batch), prod(&contr), prod(&free_b)])?;
    let letters: Vec<char> = batch
        .iter()
        .chain(&free_a)
        .chain(&free_b)
        .copied()
        .collect();
    let dims: Vec<usize> = letters.iter().map(|&c| size(c).unwrap_or(1)).collect();
    Ok((a3.matmul(&b3)?.reshape(&dims)?, letters))
}

pub(super) fn einsum(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let eq: String = ctx
        .string("equation", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (lhs, out) = match eq.split_once("->") {
        Some((l, o)) => (l.to_string(), Some(o.to_string())),
        None => (eq.clone(), None),
    };
    let raw: Vec<&str> = lhs.split(',').collect();
    let originals: Vec<&Tensor> = (0..raw.len())
        .map(|i| ctx.float_input(args, i))
        .collect::<Result<_>>()?;
    // The ellipsis: as many letters as the most dimensions it covers in any operand, taken
    // from those the equation does not use, aligned from the right.
    let spare: Vec<char> = ('A'..='Z')
        .chain('a'..='z')
        .filter(|c| !eq.contains(*c))
        .collect();
    let covered = |s: &str, t: &Tensor| t.rank() as isize - (s.len() as isize - 3);
    let mut width = 0usize;
    for (s, t) in raw.iter().zip(&originals) {
        if s.contains("...") {
            let w = covered(s, t);
            if w < 0 || s.matches("...").count() > 1 {
                return Err(ctx.invalid(format!("`{s}` for an operand of rank {}", t.rank())));
            }
            width = width.max(w as usize);
        }
    }
    if width > spare.len() {
        return Err(ctx.unsupported(format!("an ellipsis over {width} dimensions")));
    }
    let ellipsis = &spare[..width];
    let expand = |s: &str, w: usize| -> Vec<char> {
        let mut v = Vec::new();
        let (head, tail) = s.split_once("...").unwrap_or((s, ""));
        v.extend(head.chars());
        v.extend(&ellipsis[width - w..]);
        v.extend(tail.chars());
        v
    };
    let specs: Vec<Vec<char>> = raw
        .iter()
        .zip(&originals)
        .map(|(s, t)| {
            if s.contains("...") {
                expand(s, covered(s, t) as usize)
            } else {
                s.chars().collect()
            }
        })
        .collect();
    for (s, t) in specs.iter().zip(&originals) {
        if s.len() != t.rank() || s.iter().any(|c| !c.is_ascii_alphabetic()) {
            return Err(ctx.invalid(format!(
                "`{}` for an operand of rank {}",
                s.iter().collect::<String>(),
                t.rank()
            )));
        }
    }
    // Repeated indices within an operand: its diagonals.
    let mut owned = Vec::with_capacity(specs.len());
    let mut specs_d = Vec::with_capacity(specs.len());
    for (s, t) in specs.iter().zip(&originals) {
        let (t, l) = diagonals(ctx, t, s)?;
        owned.push(t);
        specs_d.push(l);
    }
    let specs = specs_d;
    let inputs: Vec<&Tensor> = owned.iter().collect();
    let count = |c: char| specs.iter().flatten().filter(|&&x| x == c).count();
    let out: Vec<char> = match out {
        Some(o) if o.contains("...") => expand(&o, width),
        Some(o) => o.chars().collect(),
        None => {
            let mut o: Vec<char> = specs
                .iter()
                .flatten()
                .copied()
                .filter(|&c| count(c) == 1 && !ellipsis.contains(&c))
                .collect();
            o.sort_unstable();
            ellipsis.iter().copied().chain(o).collect()
        }
    };
    let size = |c: char| -> Option<usize> {
        specs
            .iter()
            .zip(&inputs)
            .find_map(|(s, t)| s.iter().position(|&x| x == c).map(|i| t.shape()[i]))
    };
    // Operands contracted pairwise, left to right: each product keeps the letters the output
    // or a later operand still needs.
    let mut acc = inputs[0].clone();
    let mut acc_l = specs[0].clone();
    for k in 1..inputs.len() {
        let later = &specs[k + 1..];
        let keep = |c: char| out.contains(&c) || later.iter().any(|s| s.contains(&c));
        (acc, acc_l) = pair(ctx, (&acc, &acc_l), (inputs[k], &specs[k]), keep, &size)?;
    }
    let (t, letters) = sum_out(&acc, &acc_l, |c| out.contains(&c))?;
    let y = arrange(&t, &letters, &out)?;
    Ok(vec![Value::Float(y)])
}
