//! Batched matmul through `matrixmultiply::sgemm` (f32, threaded by the crate).

use super::alloc;
use crate::error::Result;
use crate::matmul_plan::MatmulPlan;
use crate::op::UnaryOp;

/// Products of at least this many multiply-adds use kiln's SGEMM (AVX-512F or AVX2 + FMA
/// micro-kernels) where the CPU has one (2^18: the pointwise convolutions of OCR and MobileNet
/// models, 0.3–2 M multiply-adds, ran 4–25% faster on it than on matrixmultiply).
#[cfg(target_arch = "x86_64")]
const OWN_KERNEL_MIN: usize = 1 << 18;

/// Most rows of `x` in `x · wᵀ` that take row dot products instead of SGEMM.
const GEMV_ROWS: usize = 16;

/// Every batch through `sgemm` (m, n, k > 0), into an output that is never zeroed: the
/// kernel writes every element.
#[cfg(target_arch = "x86_64")]
fn own_kernel(
    a: &[f32],
    b: &[f32],
    plan: &MatmulPlan,
    epilogue: Option<super::RowEpilogue>,
) -> Result<Vec<f32>> {
    use super::sgemm::{View, gemm};
    let (m, k, n) = (plan.m, plan.k, plan.n);
    let total = plan.out_numel();
    let mut out = super::reserve("matmul", total)?;
    for (batch, (c, &(oa, ob))) in out.spare_capacity_mut()[..total]
        .chunks_mut(m * n)
        .zip(&plan.offsets)
        .enumerate()
    {
        let view = |data, offset, (rs, cs): (usize, usize)| View {
            data,
            offset,
            rs,
            cs,
        };
        // Rows numbered across the batches, as the whole output's.
        let numbered = epilogue.map(|f| move |i: usize, row: &mut [f32]| f(batch * m + i, row));
        gemm(
            m,
            k,
            n,
            view(a, oa, plan.a_strides),
            view(b, ob, plan.b_strides),
            c,
            numbered.as_ref().map(|f| f as super::RowEpilogue),
        );
    }
    // SAFETY: gemm wrote all m·n elements of every batch, i.e. the first `total` values.
    unsafe { out.set_len(total) };
    Ok(out)
}

pub(crate) fn matmul(a: &[f32], b: &[f32], plan: &MatmulPlan) -> Result<Vec<f32>> {
    matmul_then(a, b, plan, None)
}

/// The product, with `epilogue` applied to every row of the result: inside the threads of
/// kiln's own kernel where it runs, afterwards otherwise.
pub(crate) fn matmul_then(
    a: &[f32],
    b: &[f32],
    plan: &MatmulPlan,
    epilogue: Option<super::RowEpilogue>,
) -> Result<Vec<f32>> {
    let (m, k, n) = (plan.m, plan.k, plan.n);
    let finish = |mut out: Vec<f32>| {
        if let Some(f) = epilogue
            && n > 0
        {
            out.chunks_exact_mut(n)
                .enumerate()
                .for_each(|(i, row)| f(i, row));
        }
        Ok(out)
    };
    if m == 0 || n == 0 || k == 0 {
        return finish(alloc("matmul", plan.out_numel())?); // an empty sum is 0
    }
    let (ars, acs) = plan.a_strides;
    let (brs, bcs) = plan.b_strides;
    // A few rows times a weight stored as rows of K (`x · wᵀ`, a decode step's GEMV): dot
    // products along the weight's rows, which read it once (SGEMM would pack all of it).
    if m <= GEMV_ROWS && plan.offsets == [(0, 0)] && (ars, acs) == (k, 1) && (brs, bcs) == (1, k) {
        return finish(super::qmatmul::matmul_rows(a, b, (m, k, n))?);
    }
    // A weight of many rows times a few columns (`W · x` for a pointwise convolution of a
    // small image, a matmul against a narrow right side): the same dot products along the
    // weight's rows, with the few columns copied into rows first.
    if n <= GEMV_ROWS && m > GEMV_ROWS && plan.offsets == [(0, 0)] && (ars, acs) == (k, 1) {
        let mut bt = Vec::with_capacity(n * k);
        for j in 0..n {
            bt.extend((0..k).map(|p| b[p * brs + j * bcs]));
        }
        return finish(super::qmatmul::row_dots(&bt, a, (n, k, m))?);
    }
    #[cfg(target_arch = "x86_64")]
    if m * n * k >= OWN_KERNEL_MIN && super::sgemm::available().is_some() {
        return own_kernel(a, b, plan, epilogue);
    }
    let mut out = alloc("matmul", plan.out_numel())?;
    for (c, &(oa, ob)) in out.chunks_mut(m * n).zip(&plan.offsets) {
        // Bounds: the plan was built from the operands' shapes, so every index that sgemm reads,
        // oa + i*ars + p*acs for i < m, p < k, lies inside `a` (and likewise for `b`); we check
        // the extreme corner once instead of trusting it.
        let a_last = oa + (m - 1) * ars + (k - 1) * acs;
        let b_last = ob + (k - 1) * brs + (n - 1) * bcs;
        assert!(
            a_last < a.len() && b_last < b.len(),
            "matmul plan out of bounds"
        );
        // SAFETY: pointers are valid for the strided m x k, k x n and m x n matrices (checked
        // above for a and b; c is a dense chunk of m*n), and c does not alias a or b.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr().add(oa),
                ars as isize,
                acs as isize,
                b.as_ptr().add(ob),
                brs as isize,
                bcs as isize,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    finish(out)
}

/// `act(x · wᵀ + bias)` for a plan built by `MatmulPlan::with_transposed_rhs`.
pub(crate) fn linear(
    x: &[f32],
    w: &[f32],
    plan: &MatmulPlan,
    bias: Option<&[f32]>,
    act: Option<UnaryOp>,
) -> Result<Vec<f32>> {
    if bias.is_none() && act.is_none() {
        return matmul(x, w, plan);
    }
    let epilogue = |_: usize, row: &mut [f32]| {
        if let Some(b) = bias {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
        if let Some(op) = act {
            op.apply_slice(row);
        }
    };
    matmul_then(x, w, plan, Some(&epilogue))
}
