//! The optimizer update on the CPU: the twin of `shaders/optim.wgsl`, with the same formulas.

use crate::optim_params::{DECOUPLED, FIRST_STEP, NESTEROV, OptimParams};

/// Update `param` in place from `grad` and the state (none: SGD; one: the momentum buffer;
/// two: Adam's moments).
pub(crate) fn update(
    param: &mut [f32],
    grad: &[f32],
    state: &mut [&mut Vec<f32>],
    p: &OptimParams,
) {
    match state {
        [] => {
            for (w, &g) in param.iter_mut().zip(grad) {
                *w -= p.lr * (g + p.weight_decay * *w);
            }
        }
        [buf] => {
            for ((w, &g), b) in param.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let d = g + p.weight_decay * *w;
                *b = if p.flags & FIRST_STEP != 0 {
                    d
                } else {
                    p.momentum * *b + d
                };
                let upd = if p.flags & NESTEROV != 0 {
                    d + p.momentum * *b
                } else {
                    *b
                };
                *w -= p.lr * upd;
            }
        }
        [m, v, ..] => {
            for (((w, &g), m), v) in param
                .iter_mut()
                .zip(grad)
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                let mut d = g;
                if p.flags & DECOUPLED != 0 {
                    *w *= 1.0 - p.lr * p.weight_decay;
                } else {
                    d += p.weight_decay * *w;
                }
                *m = p.beta1 * *m + (1.0 - p.beta1) * d;
                *v = p.beta2 * *v + (1.0 - p.beta2) * d * d;
                *w -= p.lr * (*m / p.bc1) / ((*v / p.bc2).sqrt() + p.eps);
            }
        }
    }
}
