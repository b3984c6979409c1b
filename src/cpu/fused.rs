//! Fused elementwise programs (`crate::fusion`) on the CPU: one pass over blocks of values.
//!
//! Each block of up to `BLOCK` outputs is computed instruction by instruction into small
//! registers (a block per instruction), so intermediates stay in cache and never reach a full
//! tensor; large outputs are split over kiln's worker pool. Every op uses the same Rust formula
//! as the eager path (`UnaryOp::apply_slice`, `BinaryOp::apply`), so fused and eager results are
//! identical.

use crate::error::Result;
use crate::fusion::{Inst, LeafMap, Operand, Pending, Program};
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// A program over host values.
pub(crate) type CpuFused = Program<Arc<Vec<f32>>>;

/// Values per block: 4 KiB registers, so a program of the largest size keeps its registers in
/// L2.
const BLOCK: usize = 1024;

impl CpuFused {
    /// The program's values, computed on first use.
    pub(crate) fn materialized(&self) -> Result<&Arc<Vec<f32>>> {
        if let Some(v) = self.done.get() {
            return Ok(v);
        }
        let out = Arc::new(self.run()?);
        Ok(self.done.get_or_init(|| out))
    }

    fn run(&self) -> Result<Vec<f32>> {
        if let Some(out) = self.run_single_op()? {
            return Ok(out);
        }
        let mut out = super::reserve("fused elementwise", self.n)?;
        // SAFETY: `eval_into` writes every value of each piece it is given.
        unsafe {
            super::fill_spare(&mut out, self.n, &|start, piece| {
                self.eval_into(start, piece)
            })
        };
        Ok(out)
    }

    /// A program of one op over contiguous (or, for a binary op, scalar) leaves runs through the
    /// eager loop for that op: one pass, no registers. `None` for any other program.
    fn run_single_op(&self) -> Result<Option<Vec<f32>>> {
        let leaf = |k: usize| match self.insts[k] {
            Inst::Load(l) => Some(&self.leaves[l]),
            _ => None,
        };
        let flat = |map: &LeafMap| match map {
            LeafMap::Contiguous => Some(1),
            LeafMap::Scalar => Some(0),
            LeafMap::Strided { .. } => None,
        };
        match self.insts.last() {
            Some(&Inst::Unary(op, x)) if self.insts.len() == 2 => match leaf(x) {
                Some((v, LeafMap::Contiguous)) => super::unary(v, op).map(Some),
                _ => Ok(None),
            },
            Some(&Inst::Binary(op, a, b)) if self.insts.len() <= 3 => {
                let (Some((va, ma)), Some((vb, mb))) = (leaf(a), leaf(b)) else {
                    return Ok(None);
                };
                let (Some(sa), Some(sb)) = (flat(ma), flat(mb)) else {
                    return Ok(None);
                };
                let layout = BroadcastLayout {
                    dims: vec![self.n],
                    lhs: vec![sa],
                    rhs: vec![sb],
                };
                super::binary(va, vb, &layout, self.n, op).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Outputs `start..start + piece.len()` into `piece`, block by block.
    fn eval_into(&self, start: usize, piece: &mut [MaybeUninit<f32>]) {
        let mut regs = vec![[0f32; BLOCK]; self.insts.len()];
        for (b, chunk) in piece.chunks_mut(BLOCK).enumerate() {
            let (base, len) = (start + b * BLOCK, chunk.len());
            for (k, inst) in self.insts.iter().enumerate() {
                let (before, rest) = regs.split_at_mut(k);
                let dst = &mut rest[0][..len];
                match *inst {
                    Inst::Load(leaf) => {
                        let (values, map) = &self.leaves[leaf];
                        load(values, map, base, dst);
                    }
                    Inst::Unary(op, x) => unary(op, &before[x][..len], dst),
                    Inst::Binary(op, a, b) => binary(op, &before[a][..len], &before[b][..len], dst),
                }
            }
            let last = &regs[self.insts.len() - 1][..len];
            for (o, &v) in chunk.iter_mut().zip(last) {
                o.write(v);
            }
        }
    }
}

/// Values `base..base + dst.len()` of the output, read from a leaf through its map.
fn load(values: &[f32], map: &LeafMap, base: usize, dst: &mut [f32]) {
    match map {
        LeafMap::Contiguous => dst.copy_from_slice(&values[base..base + dst.len()]),
        LeafMap::Scalar => dst.fill(values[0]),
        LeafMap::Strided { dims, strides } => {
            for (j, d) in dst.iter_mut().enumerate() {
                let (mut rem, mut at) = (base + j, 0);
                for k in (0..dims.len()).rev() {
                    at += (rem % dims[k]) * strides[k];
                    rem /= dims[k];
                }
                *d = values[at];
            }
        }
    }
}

fn unary(op: UnaryOp, x: &[f32], dst: &mut [f32]) {
    dst.copy_from_slice(x);
    op.apply_slice(dst);
}

/// `op` over two blocks; the arithmetic ops as plain loops the compiler vectorises (the same
/// IEEE operations as `BinaryOp::apply`).
fn binary(op: BinaryOp, a: &[f32], b: &[f32], dst: &mut [f32]) {
    let pairs = a.iter().zip(b).zip(dst.iter_mut());
    match op {
        BinaryOp::Add => pairs.for_each(|((x, y), d)| *d = x + y),
        BinaryOp::Sub => pairs.for_each(|((x, y), d)| *d = x - y),
        BinaryOp::Mul => pairs.for_each(|((x, y), d)| *d = x * y),
        BinaryOp::Div => pairs.for_each(|((x, y), d)| *d = x / y),
        _ => pairs.for_each(|((x, y), d)| *d = op.apply(*x, *y)),
    }
}

/// Whether elementwise ops on the CPU backend fuse (`KILN_FUSION=0` turns it off at start;
/// [`set_enabled`] for every CPU device of the process).
pub(crate) fn enabled() -> bool {
    switch().load(Ordering::Relaxed)
}

/// Turn CPU fusion on or off for the process (programs already built still run).
pub(crate) fn set_enabled(on: bool) {
    switch().store(on, Ordering::Relaxed);
}

fn switch() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| AtomicBool::new(std::env::var("KILN_FUSION").map_or(true, |v| v != "0")))
}

fn pending() -> MutexGuard<'static, Pending<Arc<Vec<f32>>>> {
    static PENDING: Mutex<Pending<Arc<Vec<f32>>>> = Mutex::new(Pending::new());
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(f: Arc<CpuFused>) -> Arc<CpuFused> {
    pending().push(&f);
    f
}

/// `op(x)` over `n` values, as a program (run when read).
pub(crate) fn fused_unary(x: Operand<Arc<Vec<f32>>>, op: UnaryOp, n: usize) -> Arc<CpuFused> {
    register(Program::unary(x, op, n))
}

/// `x op y` over `n` values, as a program (run when read).
pub(crate) fn fused_binary(
    x: Operand<Arc<Vec<f32>>>,
    y: Operand<Arc<Vec<f32>>>,
    op: BinaryOp,
    n: usize,
) -> Arc<CpuFused> {
    register(Program::binary(x, y, op, n))
}

/// Run every CPU program that a live tensor still holds, so that `Device::synchronize` means
/// the work is done; programs whose tensors are gone never run.
pub(crate) fn materialize_pending() -> Result<()> {
    let live = pending().take_live();
    for f in live {
        f.materialized()?;
    }
    Ok(())
}
