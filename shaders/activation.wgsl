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

// powf with C semantics: WGSL's pow is undefined for x < 0 and inexact at 0 on some drivers, so
// compute |x|^p (0 or inf at zero), then NaN for a negative base with non-integer p, and the
// sign of the base (-0 included) for odd integer p.
fn pow_signed(x: f32, p: f32) -> f32 {
    if (p == 0.0) {
        return 1.0;
    }
    let inf = bitcast<f32>(0x7f800000u);
    var m = pow(abs(x), p);
    if (x == 0.0) {
        m = select(0.0, inf, p < 0.0);
    }
    let integer = p == floor(p);
    if (x < 0.0 && !integer) {
        return bitcast<f32>(0x7fc00000u); // NaN
    }
    let negative = (bitcast<u32>(x) & 0x80000000u) != 0u;
    let odd = integer && abs(p - 2.0 * floor(p / 2.0)) == 1.0;
    return select(m, -m, negative && odd);
}

// ln(1 + e^v) = max(v, 0) + ln(1 + e^-|v|), without overflow.
fn softplus(v: f32) -> f32 {
    return max(v, 0.0) + log(1.0 + exp(-abs(v)));
}

// Unary op `op` with its scalar parameters (alpha, beta: see UnaryOp::params). NaN maps to NaN.
fn activate(op: u32, v: f32, alpha: f32, beta: f32) -> f32 {
    var r = v;
    switch op {
        case 0u: { r = select(v, 0.0, v < 0.0); }                  // relu
        case 1u: { r = select(v, alpha * v, v < 0.0); }            // leaky_relu
        case 2u: { r = 0.5 * v * (1.0 + erf(v * 0.70710678118654752)); } // gelu (erf)
        case 3u: { r = 0.5 * v * (1.0 + tanh_stable(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
        case 4u: { r = sigmoid(v); }
        case 5u: { r = tanh_stable(v); }
        case 6u: { r = v * sigmoid(v); }                           // silu
        case 7u: { r = exp(v); }
        case 8u: { r = log(v); }
        case 9u: { r = sqrt(v); }
        case 10u: { r = 1.0 / sqrt(v); }                           // rsqrt (the builtin is approximate)
        case 11u: { r = abs(v); }
        case 12u: { r = -v; }
        case 13u: { r = 1.0 / v; }
        case 14u: { r = v * v; }
        case 15u: { r = pow_signed(v, alpha); }
        case 16u: { r = min(max(v, alpha), beta); }                // clamp
        case 17u: { r = softplus(v); }
        case 18u: { r = select(alpha * (exp(v) - 1.0), v, v > 0.0); } // elu
        case 19u: { r = v + alpha; }
        case 20u: { r = v * alpha; }
        case 21u: { r = v / alpha; }
        default: { }                                               // identity
    }
    return select(r, v, is_nan(v));
}

// d activate(op, v) / dv, for backward (UnaryOp::derivative in src/op.rs). Kinks take the
// one-sided value PyTorch uses (relu'(0) = 0, abs'(0) = 0, clamp' = 1 on the closed interval).
fn derivative(op: u32, v: f32, alpha: f32, beta: f32) -> f32 {
    var d = 1.0;
    switch op {
        case 0u: { d = select(0.0, 1.0, v > 0.0); }                 // relu
        case 1u: { d = select(alpha, 1.0, v > 0.0); }               // leaky_relu
        case 2u: {                                                  // gelu (erf)
            d = 0.5 * (1.0 + erf(v * 0.70710678118654752)) + v * 0.3989422804014327 * exp(-0.5 * v * v);
        }
        case 3u: {                                                  // gelu_tanh
            let t = tanh_stable(0.7978845608028654 * (v + 0.044715 * v * v * v));
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * v * v);
        }
        case 4u: { let s = sigmoid(v); d = s * (1.0 - s); }
        case 5u: { let t = tanh_stable(v); d = 1.0 - t * t; }
        case 6u: { let s = sigmoid(v); d = s * (1.0 + v * (1.0 - s)); } // silu
        case 7u: { d = exp(v); }
        case 8u: { d = 1.0 / v; }
        case 9u: { d = 0.5 / sqrt(v); }
        case 10u: { d = -0.5 / (v * sqrt(v)); }                     // rsqrt
        case 11u: { d = select(select(0.0, -1.0, v < 0.0), 1.0, v > 0.0); } // abs
        case 12u: { d = -1.0; }
        case 13u: { d = -1.0 / (v * v); }                           // recip
        case 14u: { d = 2.0 * v; }
        case 15u: { d = select(alpha * pow_signed(v, alpha - 1.0), 0.0, alpha == 0.0); } // powf
        case 16u: { d = select(0.0, 1.0, v >= alpha && v <= beta); } // clamp
        case 17u: { d = sigmoid(v); }                               // softplus
        case 18u: { d = select(alpha * exp(v), 1.0, v > 0.0); }     // elu
        case 19u: { d = 1.0; }
        case 20u: { d = alpha; }
        case 21u: { d = 1.0 / alpha; }
        default: { }
    }
    return select(d, v, is_nan(v));
}
