//! Elementwise fusion, backend-neutral: a program of unary and binary ops over materialised
//! buffers (its leaves), built lazily as ops are applied. An elementwise op on a program's
//! unrun result extends the program instead of reading a buffer, so an intermediate that no
//! live tensor holds is never written. Each backend runs a program its own way, with the same
//! formulas: the GPU as one generated WGSL kernel (`gpu/kernels/fused.rs`), the CPU as one pass
//! over blocks of values (`cpu/fused.rs`).

use crate::error::Result;
use crate::op::{BinaryOp, UnaryOp};
use crate::shape::BroadcastLayout;
use crate::strided::StridedCopy;
use std::sync::{Arc, OnceLock, Weak};

/// Most instructions in one program; past it the operand is materialised first.
pub(crate) const MAX_INSTS: usize = 48;
/// Most leaves (input buffers) of one program: with the output, 7 storage buffers, within the
/// 8 per shader stage that every adapter offers.
pub(crate) const MAX_LEAVES: usize = 6;
/// Most dimensions of a strided leaf.
pub(crate) const MAX_RANK: usize = 8;

/// A backend's materialised values, shareable by programs.
pub(crate) trait Buffer: Clone {
    /// Whether `self` and `other` are the same values (not merely equal ones).
    fn same(&self, other: &Self) -> bool;
}

impl<T> Buffer for Arc<T> {
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

/// How the output's flat index `i` reaches a leaf's element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeafMap {
    /// Element `i`: the leaf has the output's shape.
    Contiguous,
    /// Element 0: one value broadcast everywhere.
    Scalar,
    /// `i` unravelled over `dims`, dotted with `strides` (0 where broadcast), plus `offset`.
    Strided {
        /// The (coalesced) output dimensions.
        dims: Vec<usize>,
        /// The leaf's strides for them.
        strides: Vec<usize>,
        /// The leaf's element at output index 0 (a view that starts inside its buffer).
        offset: usize,
    },
}

impl LeafMap {
    /// The map of an operand read through `strides` over `dims` (a `BroadcastLayout` side).
    pub(crate) fn of(dims: &[usize], strides: &[usize]) -> LeafMap {
        if strides.iter().all(|&s| s == 0) {
            return LeafMap::Scalar;
        }
        let mut contiguous = 1;
        let row_major = dims.iter().zip(strides).rev().all(|(&d, &s)| {
            let ok = s == contiguous || d == 1;
            contiguous *= d;
            ok
        });
        if row_major {
            LeafMap::Contiguous
        } else {
            LeafMap::Strided {
                dims: dims.to_vec(),
                strides: strides.to_vec(),
                offset: 0,
            }
        }
    }

    /// The map of a view, `plan`'s input read into its contiguous output (a `narrow`),
    /// simplified; `None` past the generated code's rank.
    pub(crate) fn view(plan: &StridedCopy) -> Option<LeafMap> {
        let p = plan.simplified();
        let map = LeafMap::Strided {
            dims: p.dims,
            strides: p.in_strides,
            offset: p.in_offset,
        };
        fits(&map).then_some(map)
    }
}

/// One step of a program, in SSA order: instruction `k` defines value `v{k}`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inst {
    /// Load from leaf `.0`.
    Load(usize),
    /// A unary op of an earlier value.
    Unary(UnaryOp, usize),
    /// A binary op of two earlier values.
    Binary(BinaryOp, usize, usize),
}

/// A fused elementwise program over materialised leaves (of backend buffer type `B`); its last
/// instruction is its value.
pub(crate) struct Program<B> {
    pub(crate) insts: Vec<Inst>,
    pub(crate) leaves: Vec<(B, LeafMap)>,
    pub(crate) n: usize,
    /// The values, once the program has run.
    pub(crate) done: OnceLock<B>,
}

/// An operand of a new program: a program to extend, or a buffer read through a map.
pub(crate) enum Operand<'a, B> {
    /// An unmaterialised program with the output's shape.
    Program(&'a Arc<Program<B>>),
    /// A materialised buffer.
    Buffer(&'a B, LeafMap),
    /// An unmaterialised program of one value, broadcast: every leaf is read at index 0.
    Splat(&'a Arc<Program<B>>),
}

/// Builds a program from operands, sharing leaves and repeated sub-programs.
struct Builder<B> {
    insts: Vec<Inst>,
    leaves: Vec<(B, LeafMap)>,
    /// Programs already inlined (few per build: a linear search beats hashing).
    inlined: Vec<(*const Program<B>, usize)>,
}

impl<B: Buffer> Builder<B> {
    fn new() -> Builder<B> {
        Builder {
            insts: Vec::new(),
            leaves: Vec::new(),
            inlined: Vec::new(),
        }
    }

    fn leaf(&mut self, buf: &B, map: LeafMap) -> usize {
        let found = self
            .leaves
            .iter()
            .position(|(b, m)| b.same(buf) && *m == map);
        let leaf = found.unwrap_or_else(|| {
            self.leaves.push((buf.clone(), map));
            self.leaves.len() - 1
        });
        self.insts.push(Inst::Load(leaf));
        self.insts.len() - 1
    }

    /// The value of `op` in this program.
    fn operand(&mut self, op: &Operand<B>) -> usize {
        match op {
            Operand::Buffer(buf, map) => self.leaf(buf, map.clone()),
            Operand::Program(p) | Operand::Splat(p) => {
                let splat = matches!(op, Operand::Splat(_));
                let key = Arc::as_ptr(p);
                if let Some(&(_, v)) = self.inlined.iter().find(|(k, _)| *k == key) {
                    return v;
                }
                let mut at = Vec::with_capacity(p.insts.len());
                for inst in &p.insts {
                    let v = match *inst {
                        Inst::Load(l) => {
                            let (buf, map) = &p.leaves[l];
                            // A one-value program reads each leaf at index 0.
                            let map = if splat { LeafMap::Scalar } else { map.clone() };
                            self.leaf(buf, map)
                        }
                        Inst::Unary(op, x) => self.push(Inst::Unary(op, at[x])),
                        Inst::Binary(op, a, b) => self.push(Inst::Binary(op, at[a], at[b])),
                    };
                    at.push(v);
                }
                let v = *at.last().expect("a program has at least one instruction");
                self.inlined.push((key, v));
                v
            }
        }
    }

    fn push(&mut self, inst: Inst) -> usize {
        self.insts.push(inst);
        self.insts.len() - 1
    }

    fn finish(self, n: usize) -> Arc<Program<B>> {
        Arc::new(Program {
            insts: self.insts,
            leaves: self.leaves,
            n,
            done: OnceLock::new(),
        })
    }
}

impl<B: Buffer> Program<B> {
    /// Instructions and leaves an operand adds to a program (an upper bound).
    pub(crate) fn size(op: &Operand<B>) -> (usize, usize) {
        match op {
            Operand::Buffer(..) => (1, 1),
            Operand::Program(p) | Operand::Splat(p) => (p.insts.len(), p.leaves.len()),
        }
    }

    /// `x` read through its map into `n` values, as a program: one value repeated (a
    /// broadcast scalar) or a view of a buffer (a `narrow`).
    pub(crate) fn read(x: Operand<B>, n: usize) -> Arc<Program<B>> {
        let mut b = Builder::new();
        b.operand(&x);
        b.finish(n)
    }

    /// `op(x)` over `n` values, as a program.
    pub(crate) fn unary(x: Operand<B>, op: UnaryOp, n: usize) -> Arc<Program<B>> {
        let mut b = Builder::new();
        let v = b.operand(&x);
        b.push(Inst::Unary(op, v));
        b.finish(n)
    }

    /// `x op y` over `n` values, as a program.
    pub(crate) fn binary(x: Operand<B>, y: Operand<B>, op: BinaryOp, n: usize) -> Arc<Program<B>> {
        let mut b = Builder::new();
        let (vx, vy) = (b.operand(&x), b.operand(&y));
        b.push(Inst::Binary(op, vx, vy));
        b.finish(n)
    }

    /// Elementwise ops the program computes.
    pub(crate) fn ops(&self) -> usize {
        self.insts
            .iter()
            .filter(|i| !matches!(i, Inst::Load(_)))
            .count()
    }

    /// Whether a new program with `parts` operands may extend this one rather than read its
    /// values: it has not run, it is read element for element (`map` contiguous), and each
    /// operand's share of the caps leaves room.
    pub(crate) fn extendable(&self, map: &LeafMap, parts: usize) -> bool {
        *map == LeafMap::Contiguous
            && !self.is_done()
            && self.insts.len() < MAX_INSTS / parts
            && self.leaves.len() <= MAX_LEAVES / parts
    }

    /// Whether the program has run.
    pub(crate) fn is_done(&self) -> bool {
        self.done.get().is_some()
    }
}

/// Whether a strided leaf fits the generated index code.
pub(crate) fn fits(map: &LeafMap) -> bool {
    match map {
        LeafMap::Strided { dims, .. } => dims.len() <= MAX_RANK,
        _ => true,
    }
}

/// How each operand of a binary op over `layout` (with `n` outputs) is read inside a fused
/// program, when both maps are within the generated code's reach (`None`: run it eagerly).
pub(crate) fn binary_maps(layout: &BroadcastLayout, n: usize) -> Option<(LeafMap, LeafMap)> {
    let maps = (
        LeafMap::of(&layout.dims, &layout.lhs),
        LeafMap::of(&layout.dims, &layout.rhs),
    );
    (n > 0 && fits(&maps.0) && fits(&maps.1)).then_some(maps)
}

/// The programs a backend has built and not run, for `Device::synchronize`: weak references, so
/// a program whose tensors are gone is never run. Dead entries are pruned when the list has
/// doubled since the last pruning, so recording an op costs O(1) amortised even while
/// thousands of programs stay alive (an autograd graph holds its intermediates).
pub(crate) struct Pending<B> {
    list: Vec<Weak<Program<B>>>,
    prune_at: usize,
}

impl<B> Pending<B> {
    /// An empty list.
    pub(crate) const fn new() -> Pending<B> {
        Pending {
            list: Vec::new(),
            prune_at: 64,
        }
    }

    /// Remember `f`.
    pub(crate) fn push(&mut self, f: &Arc<Program<B>>) {
        if self.list.len() >= self.prune_at {
            self.list.retain(|w| w.strong_count() > 0);
            self.prune_at = (2 * self.list.len()).max(64);
        }
        self.list.push(Arc::downgrade(f));
    }

    /// The programs still alive, in the order they were built; the list is emptied.
    pub(crate) fn take_live(&mut self) -> Vec<Arc<Program<B>>> {
        self.prune_at = 64;
        std::mem::take(&mut self.list)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// `y` as the right operand of a binary program with left operand `x`, or, when the two
/// together would pass one program's caps, `y` run first (`as_buffer`).
pub(crate) fn within_caps<'a, B: Buffer>(
    x: &Operand<'a, B>,
    y: Operand<'a, B>,
    as_buffer: impl FnOnce() -> Result<Operand<'a, B>>,
) -> Result<Operand<'a, B>> {
    let ((xi, xl), (yi, yl)) = (Program::size(x), Program::size(&y));
    if xi + yi + 1 > MAX_INSTS || xl + yl > MAX_LEAVES {
        as_buffer()
    } else {
        Ok(y)
    }
}
