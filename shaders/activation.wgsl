// Scalar activation functions, shared: the registry prepends this file to every shader that
// applies an activation (unary.wgsl, and the matmul epilogue), because WGSL has no #include.
// The selector values are `UnaryOp::shader_id` in src/op.rs.

// NaN by bit pattern: some drivers compile with finite-math assumptions, under which `v != v`
// and comparisons with NaN may be folded away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Overflow-free logistic function.
fn sigmoid(v: f32) -> f32 {
    if (v >= 0.0) {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

// Overflow-free tanh: the builtin may return NaN for large |v| on some drivers.
fn tanh_stable(v: f32) -> f32 {
    let t = exp(-2.0 * abs(v));
    let r = (1.0 - t) / (1.0 + t);
    return select(r, -r, v < 0.0);
}

// Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7 (WGSL has no erf builtin).
fn erf(v: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * abs(v));
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-v * v);
    return select(r, -r, v < 0.0);
}

// Activation `op` (alpha: leaky_relu's slope). NaN maps to NaN for every op.
fn activate(op: u32, v: f32, alpha: f32) -> f32 {
    var r = v;
    switch op {
        case 0u: { r = select(v, 0.0, v < 0.0); }                  // relu
        case 1u: { r = select(v, alpha * v, v < 0.0); }            // leaky_relu
        case 2u: { r = 0.5 * v * (1.0 + erf(v * 0.70710678118654752)); } // gelu (erf)
        case 3u: { r = 0.5 * v * (1.0 + tanh_stable(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
        case 4u: { r = sigmoid(v); }
        case 5u: { r = tanh_stable(v); }
        case 6u: { r = v * sigmoid(v); }                           // silu
        default: { }                                               // identity
    }
    return select(r, v, is_nan(v));
}
