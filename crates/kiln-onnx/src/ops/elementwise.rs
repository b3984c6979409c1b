//! Elementwise ONNX ops: unary functions, arithmetic and comparisons with broadcasting (on the
//! device for floats, on the host for integers), logic on masks, `Where`, `Clip`, `Cast`.

use super::{Args, Ctx};
use crate::narrow::Narrow;
use crate::proto::dtype;
use crate::value::{IntTensor, Value};
use kiln::Result;
use kiln::{BinaryOp, Shape, Tensor, UnaryOp};

fn scalar(ctx: &Ctx, v: f32) -> Result<Tensor> {
    Tensor::full(ctx.dev, &[], v)
}

/// ONNX's functions of one tensor: the op registry's (`UnaryOp::from_onnx`, parameters from
/// the node's attributes), and the few that ONNX defines as compositions of them. Integer
/// inputs take the registry op's integer meaning, on the host.
pub(super) fn unary(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let op_type = ctx.node.op_type.as_str();
    let op = UnaryOp::from_onnx(op_type, |name, default| ctx.float(name, default));
    if let Value::Int(i) = ctx.input(args, 0)? {
        let f: fn(i64) -> i64 = match op {
            Some(UnaryOp::Abs) => i64::wrapping_abs,
            Some(UnaryOp::Neg) => i64::wrapping_neg,
            Some(UnaryOp::Relu) => |v| v.max(0),
            Some(UnaryOp::Sign) => i64::signum,
            Some(UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round) => |v| v,
            _ => return Err(ctx.unsupported("integer input")),
        };
        let data = i.data.iter().map(|&v| f(v)).collect();
        return Ok(vec![Value::Int(IntTensor { data, ..i.clone() })]);
    }
    let x = ctx.float_input(args, 0)?;
    if let Some(op) = op {
        return Ok(vec![Value::Float(x.unary(op)?)]);
    }
    let y = match op_type {
        "Softsign" => x.div(&x.abs()?.add_scalar(1.0)?)?,
        "Selu" => x
            .elu(ctx.float("alpha", 1.673_263_2))?
            .mul_scalar(ctx.float("gamma", 1.050_701))?,
        "Gelu" => match ctx.string("approximate", "none").as_str() {
            "none" => x.gelu()?,
            "tanh" => x.gelu_tanh()?,
            other => return Err(ctx.unsupported(format!("approximate = {other}"))),
        },
        "Mish" => x.mul(&x.softplus()?.tanh()?)?,
        "Swish" => x.mul(&x.mul_scalar(ctx.float("alpha", 1.0))?.sigmoid()?)?,
        _ => return Err(ctx.unsupported("the op type")),
    };
    Ok(vec![Value::Float(y)])
}

/// `max(0, min(1, alpha·x + beta))`, NaN kept.
pub(super) fn is_special(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?.float_on(ctx.dev)?;
    let m = if ctx.node.op_type == "IsNaN" {
        x.ne(&x)?
    } else {
        let (neg, pos) = (
            ctx.int("detect_negative", 1) != 0,
            ctx.int("detect_positive", 1) != 0,
        );
        let hit = |v: f32| x.eq(&scalar(ctx, v)?);
        match (neg, pos) {
            (true, true) => hit(f32::INFINITY)?.maximum(&hit(f32::NEG_INFINITY)?)?,
            (true, false) => hit(f32::NEG_INFINITY)?,
            (false, true) => hit(f32::INFINITY)?,
            (false, false) => Tensor::zeros(ctx.dev, x.shape())?,
        }
    };
    Ok(vec![Value::Bool(m)])
}

/// `Mod`: C's fmod (`fmod = 1`, the sign of the dividend) or the modulus with the divisor's
/// sign (`fmod = 0`, Python's and numpy's), on the host.
pub(super) fn modulo(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (a, b) = (ctx.input(args, 0)?, ctx.input(args, 1)?);
    let fmod = ctx.int("fmod", 0) != 0;
    if let (Value::Int(x), Value::Int(y)) = (a, b) {
        let f: fn(i64, i64) -> i64 = if fmod {
            |p, q| if q == 0 { 0 } else { p.wrapping_rem(q) }
        } else {
            |p, q| {
                if q == 0 {
                    0
                } else {
                    p.wrapping_rem(q).wrapping_add(q).wrapping_rem(q)
                }
            }
        };
        return Ok(vec![Value::Int(zip_ints(ctx, x, y, f)?)]);
    }
    // Floats: on the host, as f64 bit patterns through the integer broadcaster.
    let bits = |v: &Value| -> Result<IntTensor> {
        let data = v
            .to_f64()?
            .into_iter()
            .map(|f| f.to_bits() as i64)
            .collect();
        Ok(IntTensor::new(v.shape().to_vec(), data))
    };
    let r = zip_ints(ctx, &bits(a)?, &bits(b)?, |p, q| {
        let (p, q) = (f64::from_bits(p as u64), f64::from_bits(q as u64));
        let m = p % q;
        let m = if !fmod && m != 0.0 && (m < 0.0) != (q < 0.0) {
            m + q
        } else {
            m
        };
        m.to_bits() as i64
    })?;
    let data = r
        .data
        .iter()
        .map(|&v| f64::from_bits(v as u64) as f32)
        .collect();
    Ok(vec![Value::Float(Tensor::from_vec(
        ctx.dev, data, &r.shape,
    )?)])
}

pub(super) fn identity(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?.clone();
    if ctx.node.op_type == "Dropout" {
        // Inference: the identity. A training-mode dropout is refused, not ignored.
        let training = ctx
            .int_input(args, 2)?
            .is_some_and(|t| t.data.iter().any(|&v| v != 0));
        let ratio = match args.get(1).and_then(Option::as_ref) {
            Some(r) => r.to_f64()?.first().copied().unwrap_or(0.5),
            None => 0.5,
        };
        if training && ratio != 0.0 {
            return Err(ctx.unsupported("training_mode = true with a ratio above 0 (random masks)"));
        }
        if ctx.node.output.len() > 1 {
            let mask = Tensor::ones(ctx.dev, x.shape())?;
            return Ok(vec![x, Value::Bool(mask)]);
        }
    }
    Ok(vec![x])
}

/// The shape `a` and `b` broadcast to under numpy's rules (kiln's `Shape::broadcast`), or
/// `None` if they do not.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let (a, b) = (Shape::new(a).ok()?, Shape::new(b).ok()?);
    a.broadcast(&b, "onnx").ok().map(|s| s.dims().to_vec())
}

/// `f` over two host integer tensors with broadcasting.
pub(crate) fn zip_ints(
    ctx: &Ctx,
    a: &IntTensor,
    b: &IntTensor,
    f: impl Fn(i64, i64) -> i64,
) -> Result<IntTensor> {
    let (shape, data) = zip_with(ctx, a, b, f)?;
    Ok(IntTensor {
        shape,
        data,
        elem: a.elem,
    })
}

/// `f` over two host integer tensors with broadcasting: the output's shape and values.
fn zip_with<T>(
    ctx: &Ctx,
    a: &IntTensor,
    b: &IntTensor,
    f: impl Fn(i64, i64) -> T,
) -> Result<(Vec<usize>, Vec<T>)> {
    let out = broadcast_shape(&a.shape, &b.shape)
        .ok_or_else(|| ctx.invalid(format!("shapes {:?} and {:?}", a.shape, b.shape)))?;
    // Strides that read each operand as the output's shape (0 along broadcast dimensions).
    let shape = Shape::new(&out)?;
    let (sa, sb) = (
        Shape::new(&a.shape)?.broadcast_strides(&shape),
        Shape::new(&b.shape)?.broadcast_strides(&shape),
    );
    let mut data = Vec::with_capacity(shape.numel());
    // Row by row along the last dimension: the outer coordinates give each operand's row
    // start once, then a plain loop with each operand's last stride (0 or 1).
    let last = out.last().copied().unwrap_or(1);
    let rank = out.len();
    let (la, lb) = (
        sa.last().copied().unwrap_or(0),
        sb.last().copied().unwrap_or(0),
    );
    let mut coord = vec![0usize; rank.saturating_sub(1)];
    for _ in 0..shape.numel().checked_div(last).unwrap_or(0) {
        let at = |st: &[usize]| coord.iter().zip(st).map(|(c, s)| c * s).sum::<usize>();
        let (oa, ob) = (at(&sa), at(&sb));
        data.extend((0..last).map(|j| f(a.data[oa + j * la], b.data[ob + j * lb])));
        // The next row's coordinates, row-major.
        for d in (0..coord.len()).rev() {
            coord[d] += 1;
            if coord[d] < out[d] {
                break;
            }
            coord[d] = 0;
        }
    }
    Ok((out, data))
}

/// A comparison of two host integer tensors as the device's 0/1 mask.
fn compare_ints(
    ctx: &Ctx,
    a: &IntTensor,
    b: &IntTensor,
    f: impl Fn(i64, i64) -> bool,
) -> Result<Value> {
    let (shape, data) = zip_with(ctx, a, b, |p, q| f32::from(u8::from(f(p, q))))?;
    Ok(Value::Bool(Tensor::from_vec(ctx.dev, data, &shape)?))
}

/// A host 0/1 tensor as a device mask.
fn mask(ctx: &Ctx, t: IntTensor) -> Result<Value> {
    let data = t
        .data
        .iter()
        .map(|&v| f32::from(u8::from(v != 0)))
        .collect();
    Ok(Value::Bool(Tensor::from_vec(ctx.dev, data, &t.shape)?))
}

/// ONNX's arithmetic and comparisons of two tensors with broadcasting: the op registry's
/// (`BinaryOp::from_onnx`), on the device for floats and on the host for integers.
pub(super) fn binary(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let bop = BinaryOp::from_onnx(&ctx.node.op_type, |_, default| default)
        .ok_or_else(|| ctx.unsupported("the op type"))?;
    let (a, b) = (ctx.input(args, 0)?, ctx.input(args, 1)?);
    let compare = bop.is_comparison();
    if let (Value::Int(x), Value::Int(y)) = (a, b) {
        // Each arm its own call, so that the loop inlines its op (a function pointer cost a
        // call per value: 1.4 ms for a one-hot `Equal` of 2048 × 257); comparisons write the
        // device's mask directly.
        let r = match bop {
            BinaryOp::Add => zip_ints(ctx, x, y, i64::wrapping_add),
            BinaryOp::Sub => zip_ints(ctx, x, y, i64::wrapping_sub),
            BinaryOp::Mul => zip_ints(ctx, x, y, i64::wrapping_mul),
            BinaryOp::Div => zip_ints(ctx, x, y, |p, q| if q == 0 { 0 } else { p.wrapping_div(q) }),
            BinaryOp::Pow => zip_ints(
                ctx,
                x,
                y,
                |p, q| {
                    if q < 0 { 0 } else { p.wrapping_pow(q as u32) }
                },
            ),
            BinaryOp::Eq => return Ok(vec![compare_ints(ctx, x, y, |p, q| p == q)?]),
            BinaryOp::Lt => return Ok(vec![compare_ints(ctx, x, y, |p, q| p < q)?]),
            BinaryOp::Le => return Ok(vec![compare_ints(ctx, x, y, |p, q| p <= q)?]),
            BinaryOp::Gt => return Ok(vec![compare_ints(ctx, x, y, |p, q| p > q)?]),
            BinaryOp::Ge => return Ok(vec![compare_ints(ctx, x, y, |p, q| p >= q)?]),
            _ => return Err(ctx.unsupported("integer inputs")),
        }?;
        return Ok(vec![Value::Int(r)]);
    }
    if let (Value::Int(x), BinaryOp::Pow) = (a, bop) {
        // An integer base keeps its type (ONNX's Pow output is the base's type).
        let e = b.ints().ok().filter(|_| matches!(b, Value::Int(_)));
        let exps = match e {
            Some(e) => e.data.iter().map(|&v| v as f64).collect(),
            None => b.to_f64()?,
        };
        let ex = IntTensor::new(
            b.shape().to_vec(),
            exps.iter().map(|v| v.to_bits() as i64).collect(),
        );
        let r = zip_ints(ctx, x, &ex, |p, q| {
            (p as f64).powf(f64::from_bits(q as u64)) as i64
        })?;
        return Ok(vec![Value::Int(r)]);
    }
    if matches!(a, Value::Int(_)) {
        return Err(ctx.unsupported("an integer tensor with a float one"));
    }
    let (x, y) = (a.float_on(ctx.dev)?, b.float_on(ctx.dev)?);
    let r = x.binary(&y, bop)?;
    Ok(vec![if compare {
        Value::Bool(r)
    } else {
        Value::Float(r)
    }])
}

pub(super) fn logical(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let a = ctx.input(args, 0)?.float_on(ctx.dev)?;
    let r = match ctx.node.op_type.as_str() {
        "Not" => a.eq(&scalar(ctx, 0.0)?)?,
        op => {
            let b = ctx.input(args, 1)?.float_on(ctx.dev)?;
            match op {
                "And" => a.mul(&b)?,
                "Or" => a.maximum(&b)?,
                _ => a.ne(&b)?,
            }
        }
    };
    Ok(vec![Value::Bool(r)])
}

pub(super) fn variadic(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let op = ctx.node.op_type.as_str();
    let inputs: Vec<&Value> = args.iter().flatten().collect();
    if inputs.is_empty() {
        return Err(ctx.invalid("no inputs"));
    }
    if inputs.iter().all(|v| matches!(v, Value::Int(_))) {
        let mut acc = inputs[0].ints()?;
        for v in &inputs[1..] {
            let f: fn(i64, i64) -> i64 = match op {
                "Max" => i64::max,
                "Min" => i64::min,
                _ => i64::wrapping_add,
            };
            acc = zip_ints(ctx, &acc, &v.ints()?, f)?;
        }
        if op == "Mean" {
            let n = inputs.len() as i64;
            acc.data.iter_mut().for_each(|v| *v /= n);
        }
        return Ok(vec![Value::Int(acc)]);
    }
    let mut acc = inputs[0].float_on(ctx.dev)?;
    for v in &inputs[1..] {
        let t = v.float_on(ctx.dev)?;
        acc = match op {
            "Max" => acc.maximum(&t)?,
            "Min" => acc.minimum(&t)?,
            _ => acc.add(&t)?,
        };
    }
    if op == "Mean" {
        acc = acc.div_scalar(inputs.len() as f32)?;
    }
    // A single input still broadcasts to nothing: the value itself.
    Ok(vec![Value::Float(acc)])
}

pub(super) fn where_(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (c, a, b) = (
        ctx.input(args, 0)?,
        ctx.input(args, 1)?,
        ctx.input(args, 2)?,
    );
    if let (Value::Int(x), Value::Int(y)) = (a, b) {
        let cond = c.ints()?;
        let picked = zip_ints(ctx, &cond, x, |c, v| if c != 0 { v } else { i64::MIN })?;
        let r = zip_ints(ctx, &picked, y, |p, v| if p != i64::MIN { p } else { v })?;
        // i64::MIN marks "take y"; a real i64::MIN in x is not expected in shape math.
        return Ok(vec![Value::Int(IntTensor { elem: x.elem, ..r })]);
    }
    let mask = c.float_on(ctx.dev)?;
    let r = Tensor::where_cond(&mask, &a.float_on(ctx.dev)?, &b.float_on(ctx.dev)?)?;
    Ok(vec![match a {
        Value::Bool(_) => Value::Bool(r),
        _ => Value::Float(r),
    }])
}

pub(super) fn clip(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let bound = |i: usize, attr: &str, default: f32| -> Result<f32> {
        if ctx.opset < 11 {
            return Ok(ctx.float(attr, default));
        }
        match args.get(i).and_then(Option::as_ref) {
            None => Ok(default),
            Some(v) => Ok(v.to_f64()?.first().map_or(default, |&f| f as f32)),
        }
    };
    let (lo, hi) = (
        bound(1, "min", f32::NEG_INFINITY)?,
        bound(2, "max", f32::INFINITY)?,
    );
    if let Value::Int(i) = x {
        let (lo, hi) = (
            lo.max(i64::MIN as f32) as i64,
            hi.min(i64::MAX as f32) as i64,
        );
        let data = i.data.iter().map(|&v| v.max(lo).min(hi)).collect();
        return Ok(vec![Value::Int(IntTensor { data, ..i.clone() })]);
    }
    // numpy's clip: the lower bound, then the upper (min > max gives max everywhere). Ordered
    // bounds are kiln's one `clamp` (ReLU6 and the like: one unary op, no scalar operands).
    let t = x.tensor("onnx")?;
    let y = if lo <= hi {
        t.clamp(lo, hi)?
    } else {
        t.maximum(&scalar(ctx, lo)?)?.minimum(&scalar(ctx, hi)?)?
    };
    Ok(vec![Value::Float(y)])
}

pub(super) fn cast(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.input(args, 0)?;
    let to = if ctx.node.op_type == "CastLike" {
        // The declared type of the `like` input where the graph has one (a narrow float is
        // held as f32, so its value alone does not tell), else its value's kind.
        match (ctx.declared(1), ctx.input(args, 1)?) {
            (Some(t), _) => t,
            (None, Value::Float(_)) => dtype::FLOAT,
            (None, Value::Bool(_)) => dtype::BOOL,
            (None, Value::Int(i)) => i.elem,
        }
    } else {
        ctx.int("to", 0) as i32
    };
    if let Some(narrow) = Narrow::of(to) {
        if !narrow.castable() {
            return Err(ctx.unsupported("a cast to float8e8m0"));
        }
        let saturate = ctx.int("saturate", 1) != 0;
        let v: Vec<f64> = x
            .to_f64()?
            .into_iter()
            .map(|f| narrow.round(f, saturate))
            .collect();
        return Ok(vec![if narrow.is_int() {
            Value::Int(IntTensor {
                shape: x.shape().to_vec(),
                data: v.into_iter().map(|f| f as i64).collect(),
                elem: to,
            })
        } else {
            let data = v.into_iter().map(|f| f as f32).collect();
            Value::Float(Tensor::from_vec(ctx.dev, data, x.shape())?)
        }]);
    }
    let out = match to {
        dtype::FLOAT | dtype::DOUBLE => Value::Float(x.float_on(ctx.dev)?),
        dtype::FLOAT16 => {
            let v = x.to_f64()?;
            let data = v
                .into_iter()
                .map(|f| half::f16::from_f64(f).to_f32())
                .collect();
            Value::Float(Tensor::from_vec(ctx.dev, data, x.shape())?)
        }
        dtype::BOOL => match x {
            Value::Int(i) => mask(ctx, i.clone())?,
            v => Value::Bool(v.float_on(ctx.dev)?.ne(&scalar(ctx, 0.0)?)?),
        },
        dtype::INT64
        | dtype::INT32
        | dtype::INT16
        | dtype::INT8
        | dtype::UINT8
        | dtype::UINT16
        | dtype::UINT32
        | dtype::UINT64 => {
            let mut i = x.ints()?;
            i.elem = to;
            Value::Int(i)
        }
        other => return Err(ctx.unsupported(format!("cast to element type {other}"))),
    };
    Ok(vec![out])
}

/// `PRelu`: `x` where `x >= 0`, else `slope · x`, with the slope broadcast to `x` (NaN stays
/// NaN): `relu(x) + slope · (x - relu(x))`.
pub(super) fn prelu(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let x = ctx.float_input(args, 0)?;
    let slope = ctx.input(args, 1)?.float_on(ctx.dev)?;
    let pos = x.relu()?;
    let y = pos.add(&x.sub(&pos)?.mul(&slope)?)?;
    if y.shape() != x.shape() {
        return Err(ctx.invalid(format!(
            "slope {:?} does not broadcast to the input {:?}",
            slope.shape(),
            x.shape()
        )));
    }
    Ok(vec![Value::Float(y)])
}

/// Width and signedness of an ONNX integer element type.
fn int_bits(elem: i32) -> Option<(u32, bool)> {
    use crate::proto::dtype;
    Some(match elem {
        dtype::UINT8 => (8, false),
        dtype::INT8 => (8, true),
        dtype::UINT16 => (16, false),
        dtype::INT16 => (16, true),
        dtype::UINT32 => (32, false),
        dtype::INT32 => (32, true),
        dtype::UINT64 => (64, false),
        dtype::INT64 => (64, true),
        _ => return None,
    })
}

/// `v` wrapped to `bits` bits (sign-extended when `signed`), as the element type holds it.
fn wrap(v: i64, (bits, signed): (u32, bool)) -> i64 {
    if bits == 64 {
        return v;
    }
    let m = v & ((1i64 << bits) - 1);
    if signed && (m >> (bits - 1)) & 1 == 1 {
        m - (1i64 << bits)
    } else {
        m
    }
}

/// The integer operand `i`, with its width and signedness.
fn int_operand(ctx: &Ctx, args: &Args, i: usize) -> Result<(IntTensor, (u32, bool))> {
    match ctx.input(args, i)? {
        Value::Int(t) => {
            let bits = int_bits(t.elem)
                .ok_or_else(|| ctx.unsupported(format!("element type {}", t.elem)))?;
            Ok((t.clone(), bits))
        }
        _ => Err(ctx.invalid(format!("input {i} must be integers"))),
    }
}

/// `BitwiseAnd`, `BitwiseOr`, `BitwiseXor` (broadcast) and `BitwiseNot`, on the host.
pub(super) fn bitwise(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (a, bits) = int_operand(ctx, args, 0)?;
    let out = match ctx.node.op_type.as_str() {
        "BitwiseNot" => IntTensor {
            data: a.data.iter().map(|&v| wrap(!v, bits)).collect(),
            ..a
        },
        op => {
            let (b, _) = int_operand(ctx, args, 1)?;
            let f: fn(i64, i64) -> i64 = match op {
                "BitwiseAnd" => |p, q| p & q,
                "BitwiseOr" => |p, q| p | q,
                _ => |p, q| p ^ q,
            };
            zip_ints(ctx, &a, &b, f)?
        }
    };
    Ok(vec![Value::Int(out)])
}

/// `BitShift` (`direction` LEFT or RIGHT), broadcast, with ONNX's reference rules for shifts
/// outside `0..width`: 0 (or -1 for a negative signed value shifted right). Left shifts wrap
/// to the type; right shifts are arithmetic for signed types and logical for unsigned ones.
pub(super) fn bit_shift(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let (a, bits) = int_operand(ctx, args, 0)?;
    let (b, _) = int_operand(ctx, args, 1)?;
    let (width, signed) = bits;
    let left = match ctx.string("direction", "").as_str() {
        "LEFT" => true,
        "RIGHT" => false,
        other => return Err(ctx.invalid(format!("direction {other:?}"))),
    };
    // The value as an unsigned pattern of `width` bits.
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let shifted = zip_ints(ctx, &a, &b, |v, s| {
        if s < 0 || s >= i64::from(width) {
            return if !left && signed && v < 0 { -1 } else { 0 };
        }
        let pattern = v as u64 & mask;
        if left {
            wrap((pattern << s) as i64, bits)
        } else if signed {
            v >> s
        } else {
            (pattern >> s) as i64
        }
    })?;
    Ok(vec![Value::Int(shifted)])
}
