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
use crate::shape::{BroadcastLayout, Shape};
use crate::strided::StridedCopy;
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
            // A view (a `narrow` read by an op of another kind): the layout ops' strided copy,
            // straight into the output.
            Some(&Inst::Load(l)) if self.insts.len() == 1 => match &self.leaves[l] {
                (
                    v,
                    LeafMap::Strided {
                        dims,
                        strides,
                        offset,
                    },
                ) => {
                    let plan = StridedCopy {
                        dims: dims.clone(),
                        in_strides: strides.clone(),
                        in_offset: *offset,
                        out_strides: Shape::new(dims)?.strides(),
                        out_offset: 0,
                    };
                    let mut out = super::reserve("narrow", self.n)?;
                    // SAFETY: MaybeUninit<f32> has f32's layout, and initialised values may be
                    // read as possibly uninitialised ones.
                    let src =
                        unsafe { &*(v.as_slice() as *const [f32] as *const [MaybeUninit<f32>]) };
                    super::strided_copy(src, &mut out.spare_capacity_mut()[..self.n], &plan);
                    // SAFETY: the plan covers the output's `n` values.
                    unsafe { out.set_len(self.n) };
                    Ok(Some(out))
                }
                _ => Ok(None),
            },
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

    /// Outputs `start..start + piece.len()` into `piece`, block by block, on the CPU's widest
    /// vectors ([`Piece`]).
    fn eval_into(&self, start: usize, piece: &mut [MaybeUninit<f32>]) {
        super::widest(Piece {
            program: self,
            start,
            piece,
        });
    }
}

/// Outputs `start..start + piece.len()` of `program` into `piece`, block by block. Contiguous
/// leaves are read in place; every other value of the block lives in its instruction's
/// register.
struct Piece<'a> {
    program: &'a CpuFused,
    start: usize,
    piece: &'a mut [MaybeUninit<f32>],
}

impl super::Wide for Piece<'_> {
    type Out = ();

    #[inline(always)]
    fn run(self) {
        let Piece {
            program,
            start,
            piece,
        } = self;
        // Registers as large as a block of this piece (small tensors zero less).
        let blk = BLOCK.min(piece.len());
        let mut store = vec![0f32; program.insts.len() * blk];
        let mut regs: Vec<&mut [f32]> = store.chunks_mut(blk).collect();
        let mut views: Vec<Option<&[f32]>> = vec![None; program.insts.len()];
        for (b, chunk) in piece.chunks_mut(blk).enumerate() {
            let (base, len) = (start + b * blk, chunk.len());
            for (k, inst) in program.insts.iter().enumerate() {
                let (before, rest) = regs.split_at_mut(k);
                let dst = &mut rest[0][..len];
                let (seen, view) = views.split_at_mut(k);
                let arg = |x: usize| seen[x].unwrap_or(&before[x][..len]);
                view[0] = None;
                match *inst {
                    Inst::Load(leaf) => match &program.leaves[leaf] {
                        (values, LeafMap::Contiguous) => view[0] = Some(&values[base..base + len]),
                        (values, map) => load(values, map, base, dst),
                    },
                    Inst::Unary(op, x) => unary(op, arg(x), dst),
                    Inst::Binary(op, a, b) => binary(op, arg(a), arg(b), dst),
                }
            }
            let last = program.insts.len() - 1;
            let value = views[last].unwrap_or(&regs[last][..len]);
            for (o, &v) in chunk.iter_mut().zip(value) {
                o.write(v);
            }
        }
    }
}

/// Values `base..base + dst.len()` of the output, read from a leaf through its map.
#[inline(always)]
fn load(values: &[f32], map: &LeafMap, base: usize, dst: &mut [f32]) {
    match map {
        LeafMap::Contiguous => dst.copy_from_slice(&values[base..base + dst.len()]),
        LeafMap::Scalar => dst.fill(values[0]),
        LeafMap::Strided {
            dims,
            strides,
            offset,
        } => {
            // An odometer over the dimensions from `base`: one division per dimension for the
            // block, then runs along the last dimension (copied where its stride is 1, filled
            // where it is 0: a per-channel value broadcast over a plane).
            let rank = dims.len();
            let mut idx = vec![0; rank];
            let (mut rem, mut at) = (base, *offset);
            for k in (0..rank).rev() {
                idx[k] = rem % dims[k];
                at += idx[k] * strides[k];
                rem /= dims[k];
            }
            let (last, step) = (dims[rank - 1], strides[rank - 1]);
            let mut j = 0;
            while j < dst.len() {
                let run = (last - idx[rank - 1]).min(dst.len() - j);
                let out = &mut dst[j..j + run];
                if step == 1 {
                    out.copy_from_slice(&values[at..at + run]);
                } else if step == 0 {
                    out.fill(values[at]);
                } else {
                    out.iter_mut()
                        .enumerate()
                        .for_each(|(r, d)| *d = values[at + r * step]);
                }
                j += run;
                // Carry into the outer dimensions.
                at += run * step;
                idx[rank - 1] += run;
                for k in (1..rank).rev() {
                    if idx[k] < dims[k] {
                        break;
                    }
                    at -= idx[k] * strides[k];
                    idx[k] = 0;
                    idx[k - 1] += 1;
                    at += strides[k - 1];
                }
            }
        }
    }
}

#[inline(always)]
fn unary(op: UnaryOp, x: &[f32], dst: &mut [f32]) {
    dst.copy_from_slice(x);
    op.apply_slice(dst);
}

/// `op` over two blocks; the arithmetic ops as plain loops the compiler vectorises (the same
/// IEEE operations as `BinaryOp::apply`).
#[inline(always)]
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

/// `x` read through its map into `n` values (a repeated value, a view), as a program (run
/// when read).
pub(crate) fn fused_read(x: Operand<Arc<Vec<f32>>>, n: usize) -> Arc<CpuFused> {
    register(Program::read(x, n))
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
