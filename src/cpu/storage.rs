//! The CPU backend's storage: host values, typed, and every op of the backend contract
//! ([`BackendStorage`]) as the loops of this module's siblings.

use super::fused::{self, CpuFused};
use super::row_groups::{self, Layout};
use crate::attention::AttnDims;
use crate::backend::{Around, BackendStorage, Kernel, WherePlan, mismatch};
use crate::conv::Window;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fusion::{self, LeafMap, Operand};
use crate::matmul_plan::MatmulPlan;
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::optim_params::{OptimParams, Replayed};
use crate::quant;
use crate::rope::RopeDims;
use crate::shape::BroadcastLayout;
use crate::strided::StridedCopy;
use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// Host values, typed. Cloning shares them; an in-place update copies shared values first.
#[derive(Clone)]
pub(crate) enum CpuStorage {
    /// 32-bit floats.
    F32(Arc<Vec<f32>>),
    /// 32-bit unsigned integers.
    U32(Arc<Vec<u32>>),
    /// 32-bit floats that a fused elementwise program computes when they are read
    /// (`cpu/fused.rs`).
    Lazy(Arc<CpuFused>),
    /// Values of a storage type (`DType::is_packed`), as the bytes of its format in `Layout`'s
    /// order.
    Packed(DType, Arc<Vec<u8>>, Layout),
}

/// f32 results.
fn f32s_of(v: Vec<f32>) -> CpuStorage {
    CpuStorage::F32(Arc::new(v))
}

/// u32 results.
fn u32s_of(v: Vec<u32>) -> CpuStorage {
    CpuStorage::U32(Arc::new(v))
}

impl CpuStorage {
    /// `data`, kept as it is.
    pub(crate) fn from_f32(data: Vec<f32>) -> CpuStorage {
        f32s_of(data)
    }

    /// u32 `data`, shared.
    pub(crate) fn from_u32(data: Arc<Vec<u32>>) -> CpuStorage {
        CpuStorage::U32(data)
    }

    /// Values of a storage type, as the bytes of its format (checked by the caller) in rows of
    /// `row_len` values (the shape's last dimension). Large ones are copied into a buffer that
    /// asked for huge pages before it was touched (weights are streamed by every product: fewer
    /// TLB misses). q8_0 and q4_0 rows are kept in groups of eight (`row_groups`), the order
    /// of the products' kernels; the bytes read back are the file's.
    pub(crate) fn from_bytes(
        dtype: DType,
        mut bytes: Vec<u8>,
        row_len: usize,
    ) -> Result<CpuStorage> {
        let layout = row_groups::groups(dtype, row_len, bytes.len()).unwrap_or(Layout::Rows);
        let bytes = if bytes.len() >= super::HUGE_PAGE_MIN {
            let mut v = super::reserve("from_bytes", bytes.len())?;
            match layout {
                Layout::Grouped { row_bytes } => {
                    v.resize(bytes.len(), 0);
                    row_groups::group(dtype, row_bytes, &bytes, &mut v);
                }
                Layout::Rows => v.extend_from_slice(&bytes),
            }
            v
        } else {
            if let Layout::Grouped { row_bytes } = layout {
                row_groups::group_in_place(dtype, row_bytes, &mut bytes);
            }
            bytes
        };
        Ok(CpuStorage::Packed(dtype, Arc::new(bytes), layout))
    }

    /// The bytes of a packed operand in the file's order (`DTypeMismatch` naming `op`
    /// otherwise): borrowed, or ungrouped into a copy.
    fn file_bytes(&self, op: &'static str) -> Result<(DType, Cow<'_, [u8]>)> {
        let (dtype, bytes, layout) = self.packed(op)?;
        Ok(match layout {
            Layout::Rows => (dtype, Cow::Borrowed(bytes)),
            Layout::Grouped { row_bytes } => {
                let mut out = super::alloc(op, bytes.len())?;
                row_groups::ungroup(dtype, row_bytes, bytes, &mut out);
                (dtype, Cow::Owned(out))
            }
        })
    }

    /// The bytes of a packed operand and their order (`DTypeMismatch` naming `op` otherwise).
    fn packed(&self, op: &'static str) -> Result<(DType, &[u8], Layout)> {
        match self {
            CpuStorage::Packed(d, b, l) => Ok((*d, b.as_slice(), *l)),
            other => Err(Error::Unsupported {
                op,
                reason: format!(
                    "the weight must have a storage type (f16, q8_0, ...), not {}",
                    other.dtype()
                ),
            }),
        }
    }

    /// `n` copies of `value`.
    pub(crate) fn full(n: usize, value: f32) -> Result<CpuStorage> {
        Ok(f32s_of(super::fill(n, value)?))
    }

    /// `n` values of `dtype` filled by strided copies from `parts` (which have that element
    /// type and cover the output, unless the caller asked for a `zeroed` start: a zero start
    /// serves both types). Without zeros the output is written once, never cleared first.
    pub(crate) fn assemble(
        op: &'static str,
        dtype: DType,
        n: usize,
        parts: &[(&CpuStorage, &StridedCopy)],
        zeroed: bool,
    ) -> Result<CpuStorage> {
        let fill = |srcs: &[(&[u32], &StridedCopy)]| -> Result<Vec<u32>> {
            if zeroed {
                let mut out = super::alloc(op, n)?;
                for (src, plan) in srcs {
                    super::strided_copy(src, &mut out, plan);
                }
                return Ok(out);
            }
            let mut out: Vec<u32> = super::reserve(op, n)?;
            let spare = &mut out.spare_capacity_mut()[..n];
            for (src, plan) in srcs {
                // SAFETY: MaybeUninit<u32> has u32's layout, and initialised values may be read
                // as possibly uninitialised ones.
                let src = unsafe { &*(*src as *const [u32] as *const [MaybeUninit<u32>]) };
                super::strided_copy(src, spare, plan);
            }
            // SAFETY: the parts cover the output (the caller's contract without `zeroed`).
            unsafe { out.set_len(n) };
            Ok(out)
        };
        Ok(match dtype {
            // f32 values move as their bits (a copy is the same either way).
            DType::F32 => {
                let srcs = parts
                    .iter()
                    .map(|(s, p)| Ok((bytemuck::cast_slice(s.f32s(op)?.as_slice()), *p)))
                    .collect::<Result<Vec<_>>>()?;
                f32s_of(bytemuck::allocation::cast_vec(fill(&srcs)?))
            }
            DType::U32 => {
                let srcs = parts
                    .iter()
                    .map(|(s, p)| Ok((s.u32s(op)?.as_slice(), *p)))
                    .collect::<Result<Vec<_>>>()?;
                u32s_of(fill(&srcs)?)
            }
            packed => return Err(mismatch(op, DType::F32, packed)),
        })
    }

    /// The f32 values (running a fused program first).
    pub(crate) fn f32s(&self, op: &'static str) -> Result<&Arc<Vec<f32>>> {
        match self {
            CpuStorage::F32(v) => Ok(v),
            CpuStorage::Lazy(f) => f.materialized(),
            other => Err(mismatch(op, DType::F32, other.dtype())),
        }
    }

    /// The u32 values.
    fn u32s(&self, op: &'static str) -> Result<&Arc<Vec<u32>>> {
        match self {
            CpuStorage::U32(v) => Ok(v),
            other => Err(mismatch(op, DType::U32, other.dtype())),
        }
    }

    /// This f32 operand as the input of a fused program, read through `map`: its program (to
    /// extend) where it has the output's shape and stays within one program's size, else its
    /// values.
    fn operand(
        &self,
        op: &'static str,
        map: LeafMap,
        parts: usize,
    ) -> Result<Operand<'_, Arc<Vec<f32>>>> {
        if let CpuStorage::Lazy(f) = self
            && f.extendable(&map, parts)
        {
            return Ok(Operand::Program(f));
        }
        Ok(Operand::Buffer(self.f32s(op)?, map))
    }

    /// The values of an optional f32 operand.
    fn opt_f32s<'s>(op: &'static str, s: Option<&'s CpuStorage>) -> Result<Option<&'s [f32]>> {
        s.map(|s| Ok(s.f32s(op)?.as_slice())).transpose()
    }
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) | CpuStorage::Lazy(_) => DType::F32,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::Packed(d, _, _) => *d,
        }
    }

    fn takes(&self, _kernel: Kernel) -> bool {
        true // the CPU's loops have no length limits
    }

    fn to_f32(&self, op: &'static str, _n: usize) -> Result<Vec<f32>> {
        Ok(self.f32s(op)?.as_ref().clone())
    }

    fn to_u32(&self, op: &'static str, _n: usize) -> Result<Vec<u32>> {
        Ok(self.u32s(op)?.as_ref().clone())
    }

    fn duplicate(&self, _op: &'static str, _n: usize) -> Result<CpuStorage> {
        Ok(self.clone())
    }

    fn to_bytes(&self, op: &'static str, n: usize) -> Result<Vec<u8>> {
        Ok(match self {
            CpuStorage::Packed(..) => self.file_bytes(op)?.1.into_owned(),
            CpuStorage::U32(v) => bytemuck::cast_slice(v.as_slice()).to_vec(),
            _ => quant::encode(op, DType::F32, &self.to_f32(op, n)?)?,
        })
    }

    fn cast(&self, op: &'static str, dtype: DType, n: usize, row_len: usize) -> Result<CpuStorage> {
        // f32 <-> f16/bf16: threaded, vectorized, no intermediate copy.
        if let CpuStorage::Packed(from, b, Layout::Rows) = self
            && super::half::is_half(*from)
            && dtype == DType::F32
        {
            return Ok(f32s_of(super::half::decode(op, *from, &b[..2 * n])?));
        }
        if super::half::is_half(dtype) && self.dtype() == DType::F32 {
            let bytes = super::half::encode(op, dtype, &self.f32s(op)?[..n])?;
            return Ok(CpuStorage::Packed(dtype, Arc::new(bytes), Layout::Rows));
        }
        let values = match self {
            CpuStorage::Packed(..) => {
                let (from, b) = self.file_bytes(op)?;
                let mut v = super::alloc(op, n)?;
                quant::decode(from, &b, &mut v);
                v
            }
            CpuStorage::U32(v) => v.iter().map(|&i| i as f32).collect(),
            _ => self.to_f32(op, n)?,
        };
        Ok(match dtype {
            DType::F32 => f32s_of(values),
            DType::U32 => u32s_of(values.iter().map(|&v| v as u32).collect()),
            packed => CpuStorage::from_bytes(packed, quant::encode(op, packed, &values)?, row_len)?,
        })
    }

    fn matmul_packed(&self, weight: &CpuStorage, mkn: (usize, usize, usize)) -> Result<CpuStorage> {
        const OP: &str = "linear";
        let (dtype, w, layout) = weight.packed(OP)?;
        let x = self.f32s(OP)?;
        Ok(f32s_of(super::qmatmul::matmul_packed(
            OP, x, dtype, w, layout, mkn,
        )?))
    }

    fn packed_rows(&self, _ids: &CpuStorage, idx: &[u32], len: usize) -> Result<CpuStorage> {
        const OP: &str = "embedding_rows";
        let (dtype, table, layout) = self.packed(OP)?;
        let row_bytes = quant::byte_len(OP, dtype, len)?;
        // Groups of rows of another length (the table reshaped): the file's order, once.
        let file;
        let (table, grouped) = match layout {
            Layout::Grouped { row_bytes: g } if g != row_bytes => {
                file = self.file_bytes(OP)?.1;
                (&file[..], false)
            }
            Layout::Grouped { .. } => (table, true),
            Layout::Rows => (table, false),
        };
        let mut out = super::alloc(OP, idx.len() * len)?;
        let mut row = vec![0; if grouped { row_bytes } else { 0 }];
        for (o, &i) in out.chunks_exact_mut(len.max(1)).zip(idx) {
            let at = i as usize * row_bytes;
            if grouped {
                row_groups::row(dtype, row_bytes, table, i as usize, &mut row);
                quant::decode(dtype, &row, o);
            } else {
                quant::decode(dtype, &table[at..at + row_bytes], o);
            }
        }
        Ok(f32s_of(out))
    }

    fn unary(&self, op: UnaryOp, n: usize) -> Result<CpuStorage> {
        if n > 0 && fused::enabled() {
            let x = self.operand(op.name(), LeafMap::Contiguous, 1)?;
            return Ok(CpuStorage::Lazy(fused::fused_unary(x, op, n)));
        }
        Ok(f32s_of(super::unary(self.f32s(op.name())?, op)?))
    }

    fn splat(&self, n: usize) -> Result<Option<CpuStorage>> {
        if n == 0 || !fused::enabled() {
            return Ok(None);
        }
        let x = match self {
            CpuStorage::Lazy(f) if !f.is_done() => Operand::Splat(f),
            _ => Operand::Buffer(self.f32s("broadcast_to")?, LeafMap::Scalar),
        };
        Ok(Some(CpuStorage::Lazy(fused::fused_read(x, n))))
    }

    fn view(&self, plan: &StridedCopy) -> Result<Option<CpuStorage>> {
        let n = plan.numel();
        let map = LeafMap::view(plan);
        match map {
            Some(map) if n > 0 && fused::enabled() && self.dtype() == DType::F32 => {
                let x = Operand::Buffer(self.f32s("narrow")?, map);
                Ok(Some(CpuStorage::Lazy(fused::fused_read(x, n))))
            }
            _ => Ok(None),
        }
    }

    fn binary(
        &self,
        rhs: &CpuStorage,
        layout: &BroadcastLayout,
        n: usize,
        op: BinaryOp,
    ) -> Result<CpuStorage> {
        let name = op.name();
        // With fusion on, both operands' maps within the generated code's reach: a program.
        if let Some(maps) = fusion::binary_maps(layout, n).filter(|_| fused::enabled()) {
            let (x, y) = (
                self.operand(name, maps.0, 2)?,
                rhs.operand(name, maps.1.clone(), 2)?,
            );
            let y = fusion::within_caps(&x, y, || Ok(Operand::Buffer(rhs.f32s(name)?, maps.1)))?;
            return Ok(CpuStorage::Lazy(fused::fused_binary(x, y, op, n)));
        }
        Ok(f32s_of(super::binary(
            self.f32s(name)?,
            rhs.f32s(name)?,
            layout,
            n,
            op,
        )?))
    }

    fn where_(&self, a: &CpuStorage, b: &CpuStorage, plan: &WherePlan) -> Result<CpuStorage> {
        const OP: &str = "where";
        let [sm, sa, sb] = &plan.strides;
        Ok(f32s_of(super::where_(
            [self.f32s(OP)?, a.f32s(OP)?, b.f32s(OP)?],
            &plan.dims,
            [sm, sa, sb],
        )?))
    }

    fn reduce(&self, dims: Around, op: ReduceOp) -> Result<CpuStorage> {
        Ok(f32s_of(super::reduce(self.f32s(op.name())?, dims, op)?))
    }

    fn softmax(&self, dims: Around, log: bool) -> Result<CpuStorage> {
        let op = if log { "log_softmax" } else { "softmax" };
        Ok(f32s_of(super::softmax(self.f32s(op)?, dims, log)?))
    }

    fn argmax(&self, dims: Around) -> Result<CpuStorage> {
        Ok(u32s_of(super::argmax(self.f32s("argmax")?, dims)?))
    }

    fn cumsum(&self, dims: Around, exclusive: bool, reverse: bool) -> Result<CpuStorage> {
        let x = self.f32s("cumsum")?;
        Ok(f32s_of(super::cumsum(x, dims, exclusive, reverse)?))
    }

    fn topk(&self, dims: Around, k: usize, largest: bool) -> Result<(CpuStorage, CpuStorage)> {
        let (v, i) = super::topk(self.f32s("topk")?, dims, k, largest)?;
        Ok((f32s_of(v), u32s_of(i)))
    }

    fn norm(
        &self,
        weight: Option<&CpuStorage>,
        bias: Option<&CpuStorage>,
        _rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<CpuStorage> {
        let op = if rms { "rms_norm" } else { "layer_norm" };
        let (w, b) = (Self::opt_f32s(op, weight)?, Self::opt_f32s(op, bias)?);
        Ok(f32s_of(super::norm(self.f32s(op)?, w, b, len, eps, rms)?))
    }

    fn norm_backward(
        &self,
        weight: Option<&CpuStorage>,
        g: &CpuStorage,
        _rows: usize,
        len: usize,
        eps: f32,
        rms: bool,
    ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
        const OP: &str = "layer_norm backward";
        let w = Self::opt_f32s(OP, weight)?;
        let (dx, m, r) = super::norm_backward(self.f32s(OP)?, w, g.f32s(OP)?, len, eps, rms)?;
        Ok((f32s_of(dx), f32s_of(m), f32s_of(r)))
    }

    fn norm_param_grads(
        &self,
        [g, mean, r]: [&CpuStorage; 3],
        _rows: usize,
        len: usize,
    ) -> Result<(CpuStorage, CpuStorage)> {
        const OP: &str = "layer_norm backward";
        let (x, g, mean, r) = (self.f32s(OP)?, g.f32s(OP)?, mean.f32s(OP)?, r.f32s(OP)?);
        let (dw, db) = super::norm_param_grads(x, g, mean, r, len)?;
        Ok((f32s_of(dw), f32s_of(db)))
    }

    fn cross_entropy(
        &self,
        _targets: &CpuStorage,
        t: &[u32],
        classes: usize,
    ) -> Result<(CpuStorage, CpuStorage)> {
        let (loss, lse) = super::cross_entropy_rows(self.f32s("cross_entropy")?, t, classes)?;
        Ok((f32s_of(loss), f32s_of(lse)))
    }

    fn cross_entropy_grad(
        &self,
        _targets: &CpuStorage,
        t: &[u32],
        lse: &CpuStorage,
        g: &CpuStorage,
        classes: usize,
    ) -> Result<CpuStorage> {
        const OP: &str = "cross_entropy backward";
        let (x, l, g) = (self.f32s(OP)?, lse.f32s(OP)?, g.f32s(OP)?);
        Ok(f32s_of(super::cross_entropy_grad(x, t, l, g, classes)?))
    }

    fn matmul(
        &self,
        rhs: &CpuStorage,
        plan: &MatmulPlan,
        bias: Option<&CpuStorage>,
        act: Option<UnaryOp>,
        residual: Option<&CpuStorage>,
    ) -> Result<CpuStorage> {
        const OP: &str = "matmul";
        let bias = Self::opt_f32s(OP, bias)?;
        let mut y = super::linear(self.f32s(OP)?, rhs.f32s(OP)?, plan, bias, act)?;
        if let Some(r) = Self::opt_f32s(OP, residual)? {
            y.iter_mut().zip(r).for_each(|(v, &r)| *v += r);
        }
        Ok(f32s_of(y))
    }

    fn matmul_row_sums(
        &self,
        rhs: &CpuStorage,
        plan: &MatmulPlan,
    ) -> Result<(CpuStorage, Option<CpuStorage>)> {
        Ok((self.matmul(rhs, plan, None, None, None)?, None))
    }

    fn matmul_f16(
        &self,
        rhs: &CpuStorage,
        plan: &MatmulPlan,
        _lens: (usize, usize),
    ) -> Result<CpuStorage> {
        const OP: &str = "matmul_f16";
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
        };
        let (a, b) = (round(self.f32s(OP)?), round(rhs.f32s(OP)?));
        Ok(f32s_of(super::matmul(&a, &b, plan)?))
    }

    fn conv2d(
        &self,
        weight: &CpuStorage,
        bias: Option<&CpuStorage>,
        w: &Window,
        act: Option<UnaryOp>,
    ) -> Result<CpuStorage> {
        const OP: &str = "conv2d";
        let bias = Self::opt_f32s(OP, bias)?;
        Ok(f32s_of(super::conv2d(
            self.f32s(OP)?,
            weight.f32s(OP)?,
            bias,
            w,
            act,
        )?))
    }

    fn rfft(&self, rows: usize, len: usize, n: usize) -> Result<CpuStorage> {
        Ok(f32s_of(super::fft::rfft(self.f32s("rfft")?, rows, len, n)?))
    }

    fn pool2d(&self, w: &Window, max: bool) -> Result<CpuStorage> {
        let op = if max { "max_pool2d" } else { "avg_pool2d" };
        Ok(f32s_of(super::pool2d(self.f32s(op)?, w, max)?))
    }

    fn pad(
        &self,
        src_dims: &[usize],
        dims: &[usize],
        before: &[isize],
        value: f32,
    ) -> Result<CpuStorage> {
        let x = self.f32s("pad")?;
        Ok(f32s_of(super::pad(x, src_dims, dims, before, value)?))
    }

    fn index_select(&self, _indices: &CpuStorage, idx: &[u32], dims: Around) -> Result<CpuStorage> {
        Ok(match self {
            CpuStorage::U32(v) => u32s_of(super::index_select(v, idx, dims)?),
            f => f32s_of(super::index_select(f.f32s("index_select")?, idx, dims)?),
        })
    }

    fn index_copy(
        &mut self,
        src: &CpuStorage,
        _indices: &CpuStorage,
        idx: &[u32],
        dims: Around,
    ) -> Result<()> {
        const OP: &str = "index_copy";
        match (self, src) {
            (CpuStorage::U32(dst), CpuStorage::U32(src)) => {
                super::index_copy(Arc::make_mut(dst).as_mut_slice(), src, idx, dims);
            }
            (CpuStorage::F32(dst), src) => {
                super::index_copy(Arc::make_mut(dst).as_mut_slice(), src.f32s(OP)?, idx, dims);
            }
            (dst, src) => return Err(mismatch(OP, dst.dtype(), src.dtype())),
        }
        Ok(())
    }

    fn gather(
        &self,
        _index: &CpuStorage,
        idx: &[u32],
        dims: &[usize],
        x_strides: &[usize],
        axis: usize,
    ) -> Result<CpuStorage> {
        Ok(match self {
            CpuStorage::U32(v) => u32s_of(super::gather(v, idx, dims, x_strides, axis)?),
            f => f32s_of(super::gather(
                f.f32s("gather")?,
                idx,
                dims,
                x_strides,
                axis,
            )?),
        })
    }

    fn unary_grad(&self, g: &CpuStorage, op: UnaryOp, _n: usize) -> Result<CpuStorage> {
        let name = op.name();
        Ok(f32s_of(super::unary_grad(
            self.f32s(name)?,
            g.f32s(name)?,
            op,
        )?))
    }

    fn scatter_add(
        &self,
        _index: &CpuStorage,
        idx: &[u32],
        out_dims: &[usize],
        g_dims: &[usize],
        axis: usize,
    ) -> Result<CpuStorage> {
        let g = self.f32s("scatter_add")?;
        Ok(f32s_of(super::scatter_add(g, idx, out_dims, g_dims, axis)?))
    }

    fn index_select_grad(&self, starts: &[u32], order: &[u32], dims: Around) -> Result<CpuStorage> {
        let g = self.f32s("index_select backward")?;
        Ok(f32s_of(super::index_select_grad(
            g,
            starts,
            order,
            dims,
            order.len(),
        )?))
    }

    fn index_select_grad_on_device(
        &self,
        _index: &CpuStorage,
        idx: &[u32],
        dims: Around,
    ) -> Result<CpuStorage> {
        let (starts, order) = super::group_by_row(idx, dims.1);
        self.index_select_grad(&starts, &order, dims)
    }

    fn conv2d_grad(
        &self,
        other: &CpuStorage,
        w: &Window,
        weight: bool,
        _n: usize,
    ) -> Result<CpuStorage> {
        const OP: &str = "conv2d backward";
        let (g, o) = (self.f32s(OP)?, other.f32s(OP)?);
        Ok(f32s_of(if weight {
            super::conv2d_grad_weight(g, o, w)?
        } else {
            super::conv2d_grad_input(g, o, w)?
        }))
    }

    fn pool2d_grad(&self, g: &CpuStorage, w: &Window, max: bool, _n: usize) -> Result<CpuStorage> {
        const OP: &str = "pool2d backward";
        Ok(f32s_of(super::pool2d_grad(
            self.f32s(OP)?,
            g.f32s(OP)?,
            w,
            max,
        )?))
    }

    fn settle(&mut self) -> Result<()> {
        if let CpuStorage::Lazy(f) = self
            && f.is_done()
            && Arc::strong_count(f) == 1
        {
            *self = CpuStorage::F32(f.materialized()?.clone());
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        // The CPU backend copies on write, so its values never count as shared; an unrun
        // program does (the update works on a copy).
        matches!(self, CpuStorage::Lazy(_))
    }

    fn optimizer_update(
        &mut self,
        grad: &CpuStorage,
        state: &mut [&mut CpuStorage],
        params: &OptimParams,
        _replay: Option<&Arc<Replayed>>,
    ) -> Result<()> {
        const OP: &str = "optimizer step";
        let dtype = self.dtype();
        let CpuStorage::F32(w) = self else {
            return Err(mismatch(OP, DType::F32, dtype));
        };
        let mut bufs = Vec::with_capacity(state.len());
        for s in state.iter_mut() {
            match &mut **s {
                CpuStorage::F32(v) => bufs.push(Arc::make_mut(v)),
                other => return Err(mismatch(OP, DType::F32, other.dtype())),
            }
        }
        super::update(
            Arc::make_mut(w).as_mut_slice(),
            grad.f32s(OP)?,
            &mut bufs,
            params,
        );
        Ok(())
    }

    fn rope([x, c, s]: [&CpuStorage; 3], dims: &RopeDims) -> Result<CpuStorage> {
        const OP: &str = "rope";
        Ok(f32s_of(super::rope(
            [x.f32s(OP)?, c.f32s(OP)?, s.f32s(OP)?],
            dims,
        )?))
    }

    fn attention(
        [q, k, v]: [&CpuStorage; 3],
        lens: Option<&CpuStorage>,
        dims: &AttnDims,
    ) -> Result<(CpuStorage, CpuStorage)> {
        const OP: &str = "attention";
        let lens = match lens {
            Some(CpuStorage::U32(l)) => Some(l.as_slice()),
            Some(other) => return Err(mismatch(OP, DType::U32, other.dtype())),
            None => None,
        };
        let (o, lse) = super::attention([q.f32s(OP)?, k.f32s(OP)?, v.f32s(OP)?], lens, dims)?;
        Ok((f32s_of(o), f32s_of(lse)))
    }

    fn attention_backward(
        qkv: [&CpuStorage; 3],
        [o, g, lse]: [&CpuStorage; 3],
        dims: &AttnDims,
    ) -> Result<Vec<CpuStorage>> {
        const OP: &str = "attention backward";
        fn f(s: &CpuStorage) -> Result<&[f32]> {
            Ok(s.f32s(OP)?.as_slice())
        }
        let grads = super::attention_backward(
            [f(qkv[0])?, f(qkv[1])?, f(qkv[2])?],
            f(o)?,
            f(g)?,
            f(lse)?,
            dims,
        )?;
        Ok(grads.into_iter().map(f32s_of).collect())
    }
}
