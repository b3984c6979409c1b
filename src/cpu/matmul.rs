//! Batched matmul through `matrixmultiply::sgemm` (f32, threaded by the crate).

use super::alloc;
use crate::error::Result;
use crate::matmul_plan::MatmulPlan;
use crate::op::UnaryOp;

/// Products of at least this many multiply-adds use kiln's AVX-512 kernel where the CPU has it.
#[cfg(target_arch = "x86_64")]
const OWN_KERNEL_MIN: usize = 1 << 21;

/// Every batch through `gemm_avx512` (m, n, k > 0), into an output that is never zeroed: the
/// kernel writes every element.
#[cfg(target_arch = "x86_64")]
fn own_kernel(a: &[f32], b: &[f32], plan: &MatmulPlan) -> Result<Vec<f32>> {
    use super::gemm_avx512::{View, gemm};
    let (m, k, n) = (plan.m, plan.k, plan.n);
    let total = plan.out_numel();
    let mut out: Vec<f32> = Vec::new();
    out.try_reserve_exact(total).map_err(|e| {
        crate::error::Error::OutOfMemory(format!("matmul: {total} f32 values on the CPU: {e}"))
    })?;
    for (c, &(oa, ob)) in out.spare_capacity_mut()[..total]
        .chunks_mut(m * n)
        .zip(&plan.offsets)
    {
        let view = |data, offset, (rs, cs): (usize, usize)| View {
            data,
            offset,
            rs,
            cs,
        };
        gemm(
            m,
            k,
            n,
            view(a, oa, plan.a_strides),
            view(b, ob, plan.b_strides),
            c,
        );
    }
    // SAFETY: gemm wrote all m·n elements of every batch, i.e. the first `total` values.
    unsafe { out.set_len(total) };
    Ok(out)
}

pub(crate) fn matmul(a: &[f32], b: &[f32], plan: &MatmulPlan) -> Result<Vec<f32>> {
    let (m, k, n) = (plan.m, plan.k, plan.n);
    if m == 0 || n == 0 || k == 0 {
        return alloc("matmul", plan.out_numel()); // an empty sum is 0
    }
    let (ars, acs) = plan.a_strides;
    let (brs, bcs) = plan.b_strides;
    #[cfg(target_arch = "x86_64")]
    if m * n * k >= OWN_KERNEL_MIN && super::gemm_avx512::available() {
        return own_kernel(a, b, plan);
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
    Ok(out)
}

/// `act(x · wᵀ + bias)` for a plan built by `MatmulPlan::with_transposed_rhs`.
pub(crate) fn linear(
    x: &[f32],
    w: &[f32],
    plan: &MatmulPlan,
    bias: Option<&[f32]>,
    act: Option<UnaryOp>,
) -> Result<Vec<f32>> {
    let mut out = matmul(x, w, plan)?;
    if plan.n > 0 && (bias.is_some() || act.is_some()) {
        for row in out.chunks_mut(plan.n) {
            if let Some(b) = bias {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
            if let Some(op) = act {
                row.iter_mut().for_each(|o| *o = op.apply(*o));
            }
        }
    }
    Ok(out)
}
