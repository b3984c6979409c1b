#!/usr/bin/env python3
"""Trains three scikit-learn models on sklearn's bundled copy of the digits data set (the same
8x8 digits as kiln's examples; no download) and exports them to ONNX with skl2onnx
(`zipmap: False`, so outputs are tensors), for tests/onnx.rs and scripts/onnx_compare.py:

  logreg.onnx   StandardScaler + LogisticRegression: ai.onnx.ml Scaler, LinearClassifier
                (softmax scores), Normalizer; outputs label (int64) and probabilities
  mlp.onnx      StandardScaler + MLPClassifier (one hidden layer of 32, ReLU): Scaler, Cast,
                MatMul, Add, Relu, Softmax, ArgMax, ArrayFeatureExtractor, Reshape
  linreg.onnx   LinearRegression of the digit's value: ai.onnx.ml LinearRegressor

Beside each model: `<name>.input.pb` (64 held-out rows) and `<name>.output_<k>.pb`, what
scikit-learn itself predicts for them (predict, predict_proba), in the graph's output order.

usage: scripts/onnx_sklearn.py OUT_DIR   (needs `pip install scikit-learn skl2onnx onnx numpy`)
"""
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
X, y = load_digits(return_X_y=True)
X = X.astype(np.float32)
train, test = slice(0, len(X) - 64), slice(len(X) - 64, len(X))
models = {
    "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    "mlp": make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=500,
                                                         random_state=0)),
    "linreg": LinearRegression(),
}
for name, model in models.items():
    model.fit(X[train], y[train])
    classifier = hasattr(model, "predict_proba")
    onx = to_onnx(model, X[:1], options={"zipmap": False} if classifier else None,
                  target_opset={"": 17, "ai.onnx.ml": 3})
    onnx.save(onx, os.path.join(out, f"{name}.onnx"))
    x = X[test]
    if classifier:
        expected = [model.predict(x).astype(np.int64), model.predict_proba(x).astype(np.float32)]
    else:
        expected = [model.predict(x).astype(np.float32).reshape(-1, 1)]
    with open(os.path.join(out, f"{name}.input.pb"), "wb") as f:
        f.write(numpy_helper.from_array(x, onx.graph.input[0].name).SerializeToString())
    for k, arr in enumerate(expected):
        with open(os.path.join(out, f"{name}.output_{k}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(arr, onx.graph.output[k].name).SerializeToString())
    ops = sorted({(n.domain + "." if n.domain else "") + n.op_type for n in onx.graph.node})
    print(f"{name}.onnx: {', '.join(ops)}; held-out accuracy or R^2 {model.score(x, y[test]):.3f}")
