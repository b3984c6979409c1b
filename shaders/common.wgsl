// Helpers shared by every shader: the host prepends this file, followed by the WGSL that the op
// registry generates (src/op/: selector constants, one function per op, the `activate`,
// `derivative` and `binary_op` dispatchers), to every shader, because WGSL has no #include.

// NaN by bit pattern: some drivers compile with finite-math assumptions, under which `v != v`
// and comparisons with NaN may be folded away.
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Neither NaN nor ±inf, by bit pattern.
fn is_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn any_nan(x: f32, y: f32) -> bool {
    return is_nan(x) || is_nan(y);
}

// The f32 with these bits. A function, so that NaN and infinities stay runtime values: WGSL
// forbids a constant expression whose value is not finite, and Chromium's compiler (Tint)
// enforces it (naga does not).
fn f32_bits(bits: u32) -> f32 {
    return bitcast<f32>(bits);
}

// The quiet NaN.
fn nan_f32() -> f32 {
    return f32_bits(0x7fc00000u);
}

// A comparison's result as 1.0 / 0.0.
fn flag(c: bool) -> f32 {
    return select(0.0, 1.0, c);
}

// The flat index of an invocation in a 1-D launch whose grid may be folded into 2-D (x * y
// workgroups of `wg` invocations), because some drivers cap a dimension at 65,535 workgroups.
fn folded_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, wg: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * wg + lid;
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

// sin and cos to f32 accuracy on every adapter (WGSL promises only 2^-11 absolute error, and
// only on [-π, π]; SwiftShader's builtins are that coarse): the argument less the nearest
// multiple k of π/2 (Cody–Waite, π/2 in three parts whose products with k are exact for
// |k| < 2^13, so |x| up to about 1.2e4), Cephes' minimax polynomials on [-π/4, π/4], and the
// identity of k's quadrant.
fn quarter_turns(v: f32) -> vec2<f32> {
    let k = round(v * 0.6366197723675814);
    let r = ((v - k * 1.5703125) - k * 4.837512969970703125e-4) - k * 7.54978995489188216e-8;
    return vec2<f32>(r, k);
}

// sin(r + q·π/2) for r in [-π/4, π/4].
fn sin_quadrant(r: f32, q: i32) -> f32 {
    let z = r * r;
    let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
    let c = 1.0 - 0.5 * z
        + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
    let v = select(s, c, (q & 1) == 1);
    return select(v, -v, (q & 2) == 2);
}

fn sin_f32(v: f32) -> f32 {
    let t = quarter_turns(v);
    return sin_quadrant(t.x, i32(t.y));
}

fn cos_f32(v: f32) -> f32 {
    let t = quarter_turns(v);
    return sin_quadrant(t.x, i32(t.y) + 1);
}

// The natural logarithm, with log(0) = -inf (WGSL leaves log(0) to the implementation:
// SwiftShader gives -88, the log of the smallest normal f32).
fn log_f32(v: f32) -> f32 {
    return select(log(v), f32_bits(0xff800000u), v == 0.0);
}

// powf with C semantics (Rust's f32::powf, on the CPU backend): WGSL's pow is undefined for
// x < 0 and at 0, infinities and NaN, so: x^0 = 1 and 1^p = 1 (NaN included), NaN otherwise
// from NaN; ±1^±inf = 1, and |x|^±inf is 0 or inf; 0 and ±inf bases give 0 or inf by the sign
// of p; otherwise |x|^p, NaN for a finite negative base with non-integer p, and the sign of the
// base (-0 and -inf included) for odd integer p. NaN is tested on the bits, before any
// comparison (the earlier form, `y != 0.0` on a NaN y, gave pow(NaN, NaN) = 0 on lavapipe).
fn pow_signed(x: f32, p: f32) -> f32 {
    if (!is_nan(p) && p == 0.0) || (!is_nan(x) && x == 1.0) {
        return 1.0;
    }
    if (is_nan(x) || is_nan(p)) {
        return f32_bits(0x7fc00000u);
    }
    let inf = f32_bits(0x7f800000u);
    let ax = abs(x);
    if (abs(p) == inf) {
        if (ax == 1.0) {
            return 1.0;
        }
        return select(0.0, inf, (ax > 1.0) == (p > 0.0));
    }
    var m = pow(ax, p);
    if (ax == 0.0) {
        m = select(0.0, inf, p < 0.0);
    }
    if (ax == inf) {
        m = select(inf, 0.0, p < 0.0);
    }
    let integer = p == floor(p);
    if (x < 0.0 && ax != inf && !integer) {
        return f32_bits(0x7fc00000u); // NaN
    }
    let negative = (bitcast<u32>(x) & 0x80000000u) != 0u;
    let odd = integer && abs(p - 2.0 * floor(p / 2.0)) == 1.0;
    return select(m, -m, negative && odd);
}

// ln(1 + e^v) = max(v, 0) + ln(1 + e^-|v|), without overflow.
fn softplus(v: f32) -> f32 {
    return max(v, 0.0) + log(1.0 + exp(-abs(v)));
}

// d/dv of the tanh approximation of GELU.
fn gelu_tanh_grad(v: f32) -> f32 {
    let t = tanh_stable(0.7978845608028654 * (v + 0.044715 * v * v * v));
    return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * v * v);
}
