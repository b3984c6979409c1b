#!/usr/bin/env python3
"""Builds the ONNX models kiln is compared with onnxruntime on (scripts/onnx_compare.py), with
seeded random weights, so no large file lives in git:

  mobile.onnx       a MobileNetV3-style network: a strided 3x3 conv, BatchNormalization,
                    HardSwish, depthwise 3x3 convs (group = channels), 1x1 convs, a
                    squeeze-and-excite block (GlobalAveragePool, HardSigmoid, Mul), a
                    feature-pyramid-style upsampling (Resize, linear, x2) added to the
                    previous stage, global pooling, Gemm, Softmax. Input [1, 3, 96, 96].
  transformer.onnx  two pre-norm transformer blocks: LayerNormalization, multi-head
                    self-attention in the MatMul/Softmax pattern (Reshape, Transpose, a causal
                    mask added before Softmax), a GELU MLP, residual Adds. Input [1, 64, 128].
  classifier_head.onnx  MatMul + Add (a broadcast bias) + a 6,625-way Softmax, the pattern
                    of PP-OCRv4's recognizer head that lavapipe got wrong before e24095a (the
                    fused bias read counted against llvmpipe's loop budget). Input [4, 96].
  qlinear_conv.onnx QLinearConv on uint8 with int8 weights: per-channel weight scales and zero
                    points, 2 groups, strides (2, 1), dilations (1, 2), asymmetric pads, an
                    int32 bias. Input uint8 [1, 4, 7, 6].
  conv_integer_1d.onnx  a 1-D ConvInteger (int8, stride 2, pads (1, 2); ONNX's reference
                    evaluator takes no per-channel weight zero point here). Input int8 [1, 2, 9].
  decoder.onnx      a segmentation head's upsampling: ConvTranspose 3x3 stride 2 in 2 groups
                    and ConvTranspose 2x2 stride 2 with its bias as an Add, each followed by
                    BatchNormalization (kiln folds the Add and the batch norms into the
                    transposed convolutions at load), Relu, Sigmoid.
                    Input [1, 8, 12, 12]. Its output is onnxruntime's (the reference
                    evaluator of onnx 1.23 fails on a grouped ConvTranspose).
  einsum_*.onnx     Einsum with ellipses and diagonals (EINSUMS below).
  branchy_*.onnx    an If on a run-time condition, branches reading the outer scope, a
                    nested If (for control flow; the two files differ only in their input).

Beside each model it writes a seeded input (`<name>.input.pb`) and the output ONNX's own
reference evaluator computes for it (`<name>.output.pb`), which tests/onnx.rs checks kiln
against on every device.

usage: scripts/onnx_models.py OUT_DIR      (needs `pip install onnx numpy`)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
nodes, inits = [], []


def w(name, *shape, scale=None):
    scale = scale if scale is not None else 1.0 / np.sqrt(max(1, np.prod(shape[1:])))
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
    return name


def const(name, arr):
    inits.append(numpy_helper.from_array(np.asarray(arr), name))
    return name


def node(op, inputs, name, **attrs):
    nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
    return name


def conv_bn_act(x, cin, cout, k, stride, group, act, tag):
    y = node("Conv", [x, w(f"{tag}.w", cout, cin // group, k, k)], f"{tag}.conv",
             kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group)
    c = cout
    gamma = const(f"{tag}.g", (1 + 0.1 * rng.standard_normal(c)).astype(np.float32))
    beta, mean = w(f"{tag}.b", c, scale=0.1), w(f"{tag}.m", c, scale=0.1)
    var = const(f"{tag}.v", (np.abs(rng.standard_normal(c)) + 0.5).astype(np.float32))
    y = node("BatchNormalization", [y, gamma, beta, mean, var], f"{tag}.bn", epsilon=1e-3)
    return node(act, [y], f"{tag}.act") if act else y


def mobile():
    x = conv_bn_act("input", 3, 16, 3, 2, 1, "HardSwish", "stem")
    c = 16
    stages = []
    for i, (cout, stride, se) in enumerate([(24, 2, False), (40, 2, True), (48, 1, True), (96, 2, True)]):
        e = c * 4
        y = conv_bn_act(x, c, e, 1, 1, 1, "HardSwish", f"b{i}.expand")
        y = conv_bn_act(y, e, e, 3, stride, e, "HardSwish", f"b{i}.dw")
        if se:
            s = node("GlobalAveragePool", [y], f"b{i}.se.pool")
            s = node("Conv", [s, w(f"b{i}.se.w1", e // 4, e, 1, 1), w(f"b{i}.se.b1", e // 4, scale=0.1)], f"b{i}.se.fc1", kernel_shape=[1, 1])
            s = node("Relu", [s], f"b{i}.se.relu")
            s = node("Conv", [s, w(f"b{i}.se.w2", e, e // 4, 1, 1), w(f"b{i}.se.b2", e, scale=0.1)], f"b{i}.se.fc2", kernel_shape=[1, 1])
            s = node("HardSigmoid", [s], f"b{i}.se.gate", alpha=1 / 6, beta=0.5)
            y = node("Mul", [y, s], f"b{i}.se.mul")
        y = conv_bn_act(y, e, cout, 1, 1, 1, None, f"b{i}.project")
        if stride == 1 and cout == c:
            y = node("Add", [x, y], f"b{i}.residual")
        stages.append((x, c))
        x, c = y, cout
    # Upsample the last stage x2 and add it to the previous one, projected to its channels.
    prev, pc = stages[-1][0], 48
    up = node("Resize", [x, "", const("up.scales", np.array([1, 1, 2, 2], dtype=np.float32))], "up.resize", mode="linear")
    up = node("Conv", [up, w("up.proj", pc, c, 1, 1)], "up.proj.conv", kernel_shape=[1, 1])
    x = node("Add", [up, prev], "up.add")
    c = pc
    x = node("GlobalAveragePool", [x], "head.pool")
    x = node("Flatten", [x], "head.flat", axis=1)
    x = node("Gemm", [x, w("head.w", 10, c), w("head.b", 10, scale=0.1)], "head.fc", transB=1)
    x = node("Softmax", [x], "output", axis=-1)
    return [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 96, 96])], [1, 10]


def transformer():
    t, d, h = 64, 128, 4
    x = "input"
    mask = np.triu(np.full((t, t), -1e9, dtype=np.float32), 1)
    const("mask", mask)
    const("heads", np.array([1, t, h, d // h], dtype=np.int64))
    const("merged", np.array([1, t, d], dtype=np.int64))
    const("scale", np.array(1.0 / np.sqrt(d // h), dtype=np.float32))
    for b in range(2):
        n = node("LayerNormalization", [x, w(f"l{b}.ln1.g", d, scale=0.1), w(f"l{b}.ln1.b", d, scale=0.1)], f"l{b}.ln1", axis=-1, epsilon=1e-5)
        qkv = []
        for part in "qkv":
            p = node("MatMul", [n, w(f"l{b}.{part}", d, d)], f"l{b}.{part}.proj")
            p = node("Reshape", [p, "heads"], f"l{b}.{part}.heads")
            perm = [0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]
            qkv.append(node("Transpose", [p], f"l{b}.{part}.t", perm=perm))
        s = node("MatMul", [qkv[0], qkv[1]], f"l{b}.scores")
        s = node("Mul", [s, "scale"], f"l{b}.scaled")
        s = node("Add", [s, "mask"], f"l{b}.masked")
        s = node("Softmax", [s], f"l{b}.attn", axis=-1)
        o = node("MatMul", [s, qkv[2]], f"l{b}.ctx")
        o = node("Transpose", [o], f"l{b}.ctx.t", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, "merged"], f"l{b}.ctx.merged")
        o = node("MatMul", [o, w(f"l{b}.o", d, d)], f"l{b}.out")
        x = node("Add", [x, o], f"l{b}.res1")
        n = node("LayerNormalization", [x, w(f"l{b}.ln2.g", d, scale=0.1), w(f"l{b}.ln2.b", d, scale=0.1)], f"l{b}.ln2", axis=-1, epsilon=1e-5)
        m = node("MatMul", [n, w(f"l{b}.fc1", d, 4 * d)], f"l{b}.fc1.out")
        m = node("Add", [m, w(f"l{b}.fc1.b", 4 * d, scale=0.1)], f"l{b}.fc1.bias")
        m = node("Gelu", [m], f"l{b}.gelu")
        m = node("MatMul", [m, w(f"l{b}.fc2", 4 * d, d)], f"l{b}.fc2.out")
        x = node("Add", [x, m], f"l{b}.res2" if b == 0 else "output")
    return [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, t, d])], [1, t, d]


def bn(x, c, tag):
    gamma = const(f"{tag}.g", (1 + 0.1 * rng.standard_normal(c)).astype(np.float32))
    beta, mean = w(f"{tag}.b", c, scale=0.1), w(f"{tag}.m", c, scale=0.1)
    var = const(f"{tag}.v", (np.abs(rng.standard_normal(c)) + 0.5).astype(np.float32))
    return node("BatchNormalization", [x, gamma, beta, mean, var], f"{tag}.bn", epsilon=1e-3)


def decoder():
    x = node("ConvTranspose", ["input", w("up1.w", 8, 6, 3, 3), w("up1.bias", 12, scale=0.1)], "up1",
             kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], group=2)
    x = node("Relu", [bn(x, 12, "up1")], "up1.relu")
    x = node("ConvTranspose", [x, w("up2.w", 12, 3, 2, 2)], "up2", kernel_shape=[2, 2], strides=[2, 2])
    x = node("Add", [x, w("up2.bias", 1, 3, 1, 1, scale=0.1)], "up2.add")
    node("Sigmoid", [bn(x, 3, "up2")], "output")
    return [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 12, 12])], [1, 3, 48, 48]


def classifier_head():
    x = node("MatMul", ["input", w("head.w", 96, 6625)], "head.matmul")
    x = node("Add", [x, w("head.b", 6625, scale=0.5)], "head.bias")
    node("Softmax", [x], "output", axis=-1)
    return [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4, 96])], [4, 6625]


def branchy():
    """An `If` whose condition is computed at run time (the input's sum > 0): the then branch
    reads the outer graph's value `h` and an outer initializer; the else branch has its own
    initializer and a nested `If` on a constant condition."""
    x = "input"
    h = node("Relu", [x], "h")
    s = node("ReduceSum", [x], "s", keepdims=0)
    cond = node("Greater", [s, const("zero", np.float32(0.0))], "cond")
    then_g = helper.make_graph(
        [helper.make_node("Add", [h, w("shift", 8)], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [4, 8])])
    inner_then = helper.make_graph(
        [helper.make_node("Neg", ["scaled"], ["inner_out"])], "inner_then", [],
        [helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, [4, 8])])
    inner_else = helper.make_graph(
        [helper.make_node("Identity", ["scaled"], ["inner_out2"])], "inner_else", [],
        [helper.make_tensor_value_info("inner_out2", TensorProto.FLOAT, [4, 8])])
    else_g = helper.make_graph(
        [helper.make_node("Mul", [x, "scale"], ["scaled"]),
         helper.make_node("Constant", [], ["yes"], value=numpy_helper.from_array(np.array(True))),
         helper.make_node("If", ["yes"], ["else_out"], then_branch=inner_then, else_branch=inner_else)],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(np.full(8, 3.0, np.float32), "scale")])
    node("If", [cond], "output", then_branch=then_g, else_branch=else_g)
    return [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4, 8])], [4, 8]


def einsum(equation, in_shape, other_shapes, out_shape):
    """One `Einsum` of the input with seeded further operands (a shape, a list of shapes, or
    None for the input alone)."""
    if other_shapes is None:
        other_shapes = []
    elif isinstance(other_shapes[0], int):
        other_shapes = [other_shapes]

    def build():
        operands = ["input"] + [w(f"e_other{i}", *shape, scale=1.0) for i, shape in enumerate(other_shapes)]
        node("Einsum", operands, "output", equation=equation)
        return [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))], list(out_shape)
    return build


# Ellipses (over different numbers of dimensions, explicit and implicit outputs) and
# diagonals, beside ONNX's one such conformance case; ONNX's reference evaluates them with
# numpy's einsum.
EINSUMS = {
    "einsum_batched": ("...ij,...jk->...ik", (2, 3, 4, 5), (5, 6), (2, 3, 4, 6)),
    "einsum_broadcast_batch": ("...ij,...jk->...ik", (2, 3, 4, 5), (3, 5, 2), (2, 3, 4, 2)),
    "einsum_trace": ("...ii->...", (3, 4, 4), None, (3,)),
    "einsum_implicit": ("...ij,j", (2, 3, 4), (4,), (2, 3)),
    "einsum_diagonal_product": ("iij,jk->ik", (3, 3, 4), (4, 5), (3, 5)),
    # Three and four operands (contracted pairwise, left to right), with a batch index, an
    # ellipsis broadcast against operands without one, an index summed inside one operand,
    # and an implicit output.
    "einsum_chain": ("bij,bjk,bkl->bil", (2, 3, 4), [(2, 4, 5), (2, 5, 6)], (2, 3, 6)),
    "einsum_three_ellipsis": ("...i,ij,jz->...", (2, 3, 4), [(4, 5), (5, 7)], (2, 3)),
    "einsum_four_implicit": ("ab,bc,cd,de", (3, 4), [(4, 5), (5, 2), (2, 3)], (3, 3)),
}


def save_quantized(out):
    """The two integer convolutions above, their inputs and outputs in their own types."""
    from onnx.reference import ReferenceEvaluator

    r = np.random.default_rng(5)
    models = []
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(r.integers(-128, 128, (6, 2, 3, 3)).astype(np.int8), "w"),
        numpy_helper.from_array(r.uniform(0.005, 0.02, 6).astype(np.float32), "ws"),
        numpy_helper.from_array(r.integers(-3, 4, 6).astype(np.int8), "wz"),
        numpy_helper.from_array(np.array(0.4, np.float32), "ys"),
        numpy_helper.from_array(np.array(120, np.uint8), "yz"),
        numpy_helper.from_array(r.integers(-500, 500, 6).astype(np.int32), "b"),
    ]
    node = helper.make_node("QLinearConv", ["input", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                            ["output"], strides=[2, 1], dilations=[1, 2], pads=[1, 0, 0, 1], group=2)
    models.append(("qlinear_conv", node, inits, TensorProto.UINT8, (1, 4, 7, 6),
                   r.integers(0, 256, (1, 4, 7, 6)).astype(np.uint8)))
    inits = [
        numpy_helper.from_array(r.integers(-128, 128, (3, 2, 3)).astype(np.int8), "w"),
        numpy_helper.from_array(np.array(-2, np.int8), "xz"),
        numpy_helper.from_array(np.array(3, np.int8), "wz"),
    ]
    node = helper.make_node("ConvInteger", ["input", "w", "xz", "wz"], ["output"], strides=[2],
                            pads=[1, 2])
    models.append(("conv_integer_1d", node, inits, TensorProto.INT8, (1, 2, 9),
                   r.integers(-128, 128, (1, 2, 9)).astype(np.int8)))
    for name, node, inits, elem, shape, x in models:
        graph = helper.make_graph([node], name, [helper.make_tensor_value_info("input", elem, shape)],
                                  [helper.make_tensor_value_info("output", TensorProto.UNDEFINED, None)],
                                  inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
        model.ir_version = 9
        onnx.save(model, os.path.join(out, f"{name}.onnx"))
        (y,) = ReferenceEvaluator(model).run(None, {"input": x})
        for kind, arr in (("input", x), ("output", y)):
            with open(os.path.join(out, f"{name}.{kind}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(np.asarray(arr), kind).SerializeToString())
        print(f"{name}.onnx: output {np.asarray(y).shape} {np.asarray(y).dtype}")


def save(out, name, build, shift=0.0, ort=False):
    nodes.clear()
    inits.clear()
    inputs, out_shape = build()
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, name, inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out, f"{name}.onnx"))
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(1).standard_normal(inputs[0].type.tensor_type.shape.dim and [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]).astype(np.float32) + np.float32(shift)
    if ort:
        import onnxruntime

        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"input": x})
    else:
        (y,) = ReferenceEvaluator(model).run(None, {"input": x})
    for kind, arr in (("input", x), ("output", y)):
        with open(os.path.join(out, f"{name}.{kind}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), kind).SerializeToString())
    print(f"{name}.onnx: {len(nodes)} nodes, {sum(np.prod(i.dims) for i in inits):,} weights")


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    save(out, "mobile", mobile)
    save(out, "transformer", transformer)
    save(out, "classifier_head", classifier_head)
    # ONNX 1.23's reference evaluator cannot run a grouped ConvTranspose: onnxruntime's output.
    save(out, "decoder", decoder, ort=True)
    save_quantized(out)
    for name, (eq, a, b, y) in EINSUMS.items():
        save(out, name, einsum(eq, a, b, y))
    # Both branches of the `If` model: inputs shifted up (sum > 0) and down.
    save(out, "branchy_then", branchy, shift=1.0)
    save(out, "branchy_else", branchy, shift=-1.0)
    # The transformer again with every initializer in an external data file (what PyTorch
    # writes for models over 2 GB), for kiln's external-data loader.
    m = onnx.load(os.path.join(out, "transformer.onnx"))
    onnx.save_model(m, os.path.join(out, "transformer_external.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="transformer_external.data",
                    size_threshold=0)
