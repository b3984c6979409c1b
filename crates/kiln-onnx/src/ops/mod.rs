//! The ONNX ops kiln runs: a table of op types with the attributes each understands and the
//! function that runs it on kiln's ops.

mod attention;
mod control;
mod conv;
mod detection;
mod einsum;
mod elementwise;
mod linalg;
mod losses;
mod ml;
mod norm;
mod pad;
mod pool;
mod quantize;
mod recurrent;
mod reduce;
mod resize;
mod scan;
mod scatter;
mod shape;
mod spectral;

use super::proto::{AttributeProto, NodeProto};
use super::value::{IntTensor, Value};
use kiln::{BinaryOp, Device, Tensor, UnaryOp};
use kiln::{Error, Result};
use std::sync::LazyLock;

/// What an op sees: the device, its node and the model's opset.
pub(crate) struct Ctx<'a> {
    pub dev: &'a Device,
    pub node: &'a NodeProto,
    pub opset: i64,
    /// Element types the graph declares for its inputs, outputs and values.
    pub types: &'a std::collections::HashMap<String, i32>,
    /// Runs a subgraph (an `If` branch) in the node's scope, returning its outputs in order.
    pub subgraph: &'a dyn Fn(&super::proto::GraphProto) -> Result<Vec<Value>>,
    /// The activation a `Conv` applies to its output (the node after it, fused at load).
    pub activation: Option<kiln::UnaryOp>,
}

/// The inputs of a node (`None`: an optional input left out).
pub(crate) type Args = [Option<Value>];

/// One op type.
#[derive(Clone)]
pub(crate) struct OpDef {
    /// The op's domain: `""` for ONNX's own ops, `"ai.onnx.ml"` for the classic ML ones.
    pub domain: &'static str,
    pub name: &'static str,
    /// Attribute names it understands (any other is reported at load).
    pub attrs: &'static [&'static str],
    pub run: fn(&Ctx, &Args) -> Result<Vec<Value>>,
}

/// The attributes of RNN, GRU and LSTM (each reads those that apply to it).
const RECURRENT_ATTRS: &[&str] = &[
    "activation_alpha",
    "activation_beta",
    "activations",
    "clip",
    "direction",
    "hidden_size",
    "input_forget",
    "layout",
    "linear_before_reset",
];

/// Every op type kiln runs: the elementwise ops of kiln's op registry that are ONNX op types
/// (`UnaryOp::onnx_name`, `BinaryOp::onnx_name`; no second list of them here), then [`OWN`].
pub(crate) static OPS: LazyLock<Vec<OpDef>> = LazyLock::new(|| {
    let unary = UnaryOp::ALL
        .into_iter()
        .filter_map(|o| Some(op(o.onnx_name()?, o.param_names(), elementwise::unary)));
    let binary = BinaryOp::ALL
        .into_iter()
        .filter_map(|o| Some(op(o.onnx_name()?, &[], elementwise::binary)));
    unary
        .chain(binary)
        .chain(OWN.iter().map(OpDef::clone))
        .collect()
});

/// The op types kiln runs that are not single ops of its registry.
static OWN: &[OpDef] = &[
    // elementwise.rs: compositions of registry ops, and the rest
    op("Softsign", &[], elementwise::unary),
    op("Selu", &["alpha", "gamma"], elementwise::unary),
    op("Gelu", &["approximate"], elementwise::unary),
    op("Mish", &[], elementwise::unary),
    op("Swish", &["alpha"], elementwise::unary),
    op("IsNaN", &[], elementwise::is_special),
    op(
        "IsInf",
        &["detect_negative", "detect_positive"],
        elementwise::is_special,
    ),
    op("Mod", &["fmod"], elementwise::modulo),
    op("Identity", &[], elementwise::identity),
    op("Dropout", &["seed", "ratio"], elementwise::identity),
    op("Clip", &["min", "max"], elementwise::clip),
    op("And", &[], elementwise::logical),
    op("Or", &[], elementwise::logical),
    op("Xor", &[], elementwise::logical),
    op("Not", &[], elementwise::logical),
    op("Max", &[], elementwise::variadic),
    op("Min", &[], elementwise::variadic),
    op("Sum", &[], elementwise::variadic),
    op("Mean", &[], elementwise::variadic),
    op("Where", &[], elementwise::where_),
    op("Cast", &["to", "saturate"], elementwise::cast),
    op("BitShift", &["direction"], elementwise::bit_shift),
    op("BitwiseAnd", &[], elementwise::bitwise),
    op("BitwiseOr", &[], elementwise::bitwise),
    op("BitwiseXor", &[], elementwise::bitwise),
    op("BitwiseNot", &[], elementwise::bitwise),
    op("CastLike", &["saturate"], elementwise::cast),
    // control.rs
    op("If", &["then_branch", "else_branch"], control::if_),
    // spectral.rs
    op("DFT", &["axis", "inverse", "onesided"], spectral::dft),
    op("STFT", &["onesided"], spectral::stft),
    // recurrent.rs
    op("RNN", RECURRENT_ATTRS, recurrent::recurrent),
    op("GRU", RECURRENT_ATTRS, recurrent::recurrent),
    op("LSTM", RECURRENT_ATTRS, recurrent::recurrent),
    // scatter.rs
    op(
        "ScatterElements",
        &["axis", "reduction"],
        scatter::scatter_elements,
    ),
    op("Scatter", &["axis"], scatter::scatter_elements),
    op("ScatterND", &["reduction"], scatter::scatter_nd),
    // ml.rs
    ml("Scaler", &["offset", "scale"], ml::scaler),
    ml("Normalizer", &["norm"], ml::normalizer),
    ml(
        "LinearClassifier",
        &[
            "classlabels_ints",
            "classlabels_strings",
            "coefficients",
            "intercepts",
            "multi_class",
            "post_transform",
        ],
        ml::linear_classifier,
    ),
    ml(
        "LinearRegressor",
        &["coefficients", "intercepts", "post_transform", "targets"],
        ml::linear_regressor,
    ),
    ml("Binarizer", &["threshold"], ml::binarizer),
    ml("ArrayFeatureExtractor", &[], ml::array_feature_extractor),
    // shape.rs
    op("Shape", &["start", "end"], shape::shape),
    op("Size", &[], shape::size),
    op("Reshape", &["allowzero"], shape::reshape),
    op("Flatten", &["axis"], shape::flatten),
    op("Squeeze", &["axes"], shape::squeeze),
    op("Unsqueeze", &["axes"], shape::unsqueeze),
    op("Transpose", &["perm"], shape::transpose),
    op("Concat", &["axis"], shape::concat),
    op("Split", &["axis", "split", "num_outputs"], shape::split),
    op("Slice", &["starts", "ends", "axes", "steps"], shape::slice),
    op("Gather", &["axis"], shape::gather),
    op("GatherElements", &["axis"], shape::gather_elements),
    op("Trilu", &["upper"], shape::trilu),
    op("Tile", &[], shape::tile),
    op("Expand", &[], shape::expand),
    op("Constant", CONSTANT_ATTRS, shape::constant),
    op("ConstantOfShape", &["value"], shape::constant_of_shape),
    op("Range", &[], shape::range),
    op(
        "Resize",
        &[
            "antialias",
            "axes",
            "coordinate_transformation_mode",
            "cubic_coeff_a",
            "exclude_outside",
            "extrapolation_value",
            "keep_aspect_ratio_policy",
            "mode",
            "nearest_mode",
        ],
        resize::resize,
    ),
    op(
        "Attention",
        &[
            "is_causal",
            "kv_num_heads",
            "q_num_heads",
            "qk_matmul_output_mode",
            "scale",
            "softcap",
            "softmax_precision",
            "left_window_size",
            "right_window_size",
        ],
        attention::attention,
    ),
    // host.rs
    op("CumSum", &["exclusive", "reverse"], scan::cumsum),
    op("CumProd", &["exclusive", "reverse"], scan::cumprod),
    op("TopK", &["axis", "largest", "sorted"], scan::topk),
    op("Hardmax", &["axis"], reduce::hardmax),
    op("OneHot", &["axis"], scatter::one_hot),
    op("ReduceProd", REDUCE_ATTRS, reduce::reduce_prod),
    op("Pad", &["mode", "pads", "value"], pad::pad),
    op("CenterCropPad", &["axes"], shape::center_crop_pad),
    op("Compress", &["axis"], shape::compress),
    op(
        "NegativeLogLikelihoodLoss",
        &["ignore_index", "reduction"],
        losses::nll_loss,
    ),
    op(
        "SoftmaxCrossEntropyLoss",
        &["ignore_index", "reduction"],
        losses::softmax_cross_entropy,
    ),
    // nn.rs
    op("MatMul", &[], linalg::matmul),
    op("Einsum", &["equation"], einsum::einsum),
    op("LpNormalization", &["axis", "p"], norm::lp_norm),
    op("Gemm", &["alpha", "beta", "transA", "transB"], linalg::gemm),
    op("Softmax", &["axis"], reduce::softmax),
    op("LogSoftmax", &["axis"], reduce::softmax),
    op("ReduceSum", REDUCE_ATTRS, reduce::reduce),
    op("ReduceMean", REDUCE_ATTRS, reduce::reduce),
    op("ReduceMax", REDUCE_ATTRS, reduce::reduce),
    op("ReduceMin", REDUCE_ATTRS, reduce::reduce),
    op("ReduceSumSquare", REDUCE_ATTRS, reduce::reduce),
    op("ReduceL1", REDUCE_ATTRS, reduce::reduce),
    op("ReduceL2", REDUCE_ATTRS, reduce::reduce),
    op("ReduceLogSum", REDUCE_ATTRS, reduce::reduce),
    op("ReduceLogSumExp", REDUCE_ATTRS, reduce::reduce),
    op(
        "ArgMax",
        &["axis", "keepdims", "select_last_index"],
        reduce::argmax,
    ),
    op(
        "ArgMin",
        &["axis", "keepdims", "select_last_index"],
        reduce::argmax,
    ),
    op("Conv", CONV_ATTRS, conv::conv),
    op(
        "ConvTranspose",
        &[
            "auto_pad",
            "dilations",
            "group",
            "kernel_shape",
            "output_padding",
            "output_shape",
            "pads",
            "strides",
        ],
        conv::conv_transpose,
    ),
    op("MaxPool", POOL_ATTRS, pool::pool),
    op("AveragePool", POOL_ATTRS, pool::pool),
    op("LpPool", LP_POOL_ATTRS, pool::lp_pool),
    op(
        "NonMaxSuppression",
        &["center_point_box"],
        detection::non_max_suppression,
    ),
    op(
        "RotaryEmbedding",
        &["interleaved", "num_heads", "rotary_embedding_dim"],
        attention::rotary_embedding,
    ),
    op("GlobalAveragePool", &[], pool::global_pool),
    op("GlobalMaxPool", &[], pool::global_pool),
    op(
        "BatchNormalization",
        &["epsilon", "momentum", "training_mode", "spatial"],
        norm::batch_norm,
    ),
    op(
        "LayerNormalization",
        &["axis", "epsilon", "stash_type"],
        norm::layer_norm,
    ),
    op(
        "RMSNormalization",
        &["axis", "epsilon", "stash_type"],
        norm::rms_norm,
    ),
    op("InstanceNormalization", &["epsilon"], norm::instance_norm),
    op("PRelu", &[], elementwise::prelu),
    op(
        "DepthToSpace",
        &["blocksize", "mode"],
        shape::depth_to_space,
    ),
    op("SpaceToDepth", &["blocksize"], shape::space_to_depth),
    op(
        "DequantizeLinear",
        &["axis", "block_size", "output_dtype"],
        quantize::dequantize,
    ),
    op(
        "QuantizeLinear",
        &["axis", "block_size", "output_dtype", "saturate"],
        quantize::quantize,
    ),
    op("DynamicQuantizeLinear", &[], quantize::dynamic_quantize),
    op("MatMulInteger", &[], quantize::matmul_integer),
    op("QLinearMatMul", &[], quantize::qlinear_matmul),
    op("ConvInteger", CONV_ATTRS, quantize::conv_integer),
    op("QLinearConv", CONV_ATTRS, quantize::qlinear_conv),
];

const CONSTANT_ATTRS: &[&str] = &[
    "value",
    "value_float",
    "value_floats",
    "value_int",
    "value_ints",
    "sparse_value",
    "value_string",
    "value_strings",
];
const REDUCE_ATTRS: &[&str] = &["axes", "keepdims", "noop_with_empty_axes"];
/// LpPool's attributes: pooling's, and the norm's `p`.
const LP_POOL_ATTRS: &[&str] = &[
    "auto_pad",
    "ceil_mode",
    "dilations",
    "kernel_shape",
    "p",
    "pads",
    "strides",
];

const CONV_ATTRS: &[&str] = &[
    "auto_pad",
    "dilations",
    "group",
    "kernel_shape",
    "pads",
    "strides",
];
const POOL_ATTRS: &[&str] = &[
    "auto_pad",
    "ceil_mode",
    "count_include_pad",
    "dilations",
    "kernel_shape",
    "pads",
    "storage_order",
    "strides",
];

const fn op(
    name: &'static str,
    attrs: &'static [&'static str],
    run: fn(&Ctx, &Args) -> Result<Vec<Value>>,
) -> OpDef {
    OpDef {
        domain: "",
        name,
        attrs,
        run,
    }
}

/// An op of the `ai.onnx.ml` domain.
const fn ml(
    name: &'static str,
    attrs: &'static [&'static str],
    run: fn(&Ctx, &Args) -> Result<Vec<Value>>,
) -> OpDef {
    OpDef {
        domain: ML,
        name,
        attrs,
        run,
    }
}

/// The classic machine-learning domain (scikit-learn exports).
pub(crate) const ML: &str = "ai.onnx.ml";

/// Index `i` along an extent of `dim`, a negative one counted from the end (ONNX's rule for
/// Gather, GatherElements and the Scatter ops); outside `-dim..dim` it is
/// `Error::IndexOutOfRange` for `op`.
pub(crate) fn wrap_index(op: &'static str, i: i64, dim: usize) -> Result<usize> {
    let d = dim as i64;
    let j = if i < 0 { i + d } else { i };
    if (0..d).contains(&j) {
        Ok(j as usize)
    } else {
        Err(Error::IndexOutOfRange {
            op,
            index: i.clamp(0, u32::MAX as i64) as u32,
            size: dim,
        })
    }
}

/// Row-major strides of `shape` (host-side index arithmetic).
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The definition of op type `name` in `domain` (`""` and `"ai.onnx"` are ONNX's own).
pub(crate) fn find(domain: &str, name: &str) -> Option<&'static OpDef> {
    /// [`OPS`] by (domain, name): a node's op is looked up at every run.
    static BY_NAME: LazyLock<std::collections::HashMap<(&str, &str), &OpDef>> =
        LazyLock::new(|| {
            let mut by_name = std::collections::HashMap::new();
            for o in OPS.iter() {
                by_name.entry((o.domain, o.name)).or_insert(o); // the first, as a search finds
            }
            by_name
        });
    let domain = if domain == "ai.onnx" { "" } else { domain };
    BY_NAME.get(&(domain, name)).copied()
}

/// Run the node's op; errors name the node.
pub(crate) fn run(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let def =
        find(&ctx.node.domain, &ctx.node.op_type).ok_or_else(|| ctx.unsupported("the op type"))?;
    (def.run)(ctx, args).map_err(|e| match e {
        Error::Unsupported { reason, .. } => Error::Unsupported {
            op: "onnx",
            reason: format!("{}: {reason}", crate::describe(ctx.node)),
        },
        Error::InvalidArgument { reason, .. } => Error::InvalidArgument {
            op: "onnx",
            reason: format!("{}: {reason}", crate::describe(ctx.node)),
        },
        other => other,
    })
}

impl Ctx<'_> {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// The element type the graph declares for input `i`, if it does.
    pub fn declared(&self, i: usize) -> Option<i32> {
        self.node
            .input
            .get(i)
            .and_then(|n| self.types.get(n))
            .copied()
    }

    /// Whether the node sets attribute `name`.
    pub fn attr_present(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.attr(name).map_or(default.to_string(), |a| {
            String::from_utf8_lossy(&a.s).into_owned()
        })
    }

    pub fn unsupported(&self, what: impl std::fmt::Display) -> Error {
        Error::Unsupported {
            op: "onnx",
            reason: format!("{}: {what}", crate::describe(self.node)),
        }
    }

    pub fn invalid(&self, what: impl std::fmt::Display) -> Error {
        Error::InvalidArgument {
            op: "onnx",
            reason: format!("{}: {what}", crate::describe(self.node)),
        }
    }

    /// Input `i`, which must be present.
    pub fn input<'a>(&self, args: &'a Args, i: usize) -> Result<&'a Value> {
        args.get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| self.invalid(format!("input {i} is missing")))
    }

    /// Input `i` as a float tensor.
    pub fn float_input<'a>(&self, args: &'a Args, i: usize) -> Result<&'a Tensor> {
        self.input(args, i)?.tensor("onnx")
    }

    /// Input `i` (if present) as host integers.
    pub fn int_input(&self, args: &Args, i: usize) -> Result<Option<IntTensor>> {
        args.get(i)
            .and_then(Option::as_ref)
            .map(Value::ints)
            .transpose()
    }

    /// An axis in `-rank..rank`, made non-negative.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        if axis < -r || axis >= r.max(1) {
            return Err(self.invalid(format!("axis {axis} for rank {rank}")));
        }
        Ok(if axis < 0 {
            (axis + r) as usize
        } else {
            axis as usize
        })
    }
}

/// A value of the input's kind (float or integer) from host values.
pub(super) fn like(ctx: &Ctx, x: &Value, shape: Vec<usize>, data: Vec<f64>) -> Result<Value> {
    Ok(match x {
        Value::Int(i) => Value::Int(IntTensor {
            shape,
            data: data.into_iter().map(|v| v as i64).collect(),
            elem: i.elem,
        }),
        Value::Bool(_) => Value::Bool(Tensor::from_vec(
            ctx.dev,
            data.into_iter().map(|v| v as f32).collect(),
            &shape,
        )?),
        Value::Float(_) => Value::Float(Tensor::from_vec(
            ctx.dev,
            data.into_iter().map(|v| v as f32).collect(),
            &shape,
        )?),
    })
}

/// `(outer, len, inner)` around `axis`.
pub(super) fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}
