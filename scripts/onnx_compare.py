#!/usr/bin/env python3
"""Runs each ONNX model in a folder with onnxruntime (CPU) and with kiln (crates/kiln-onnx/examples/onnx.rs, on
the CPU backend and on lavapipe) on the same seeded input, in one run: the largest absolute
difference between the outputs and the median time of a run (outputs read back) on each.

usage: scripts/onnx_compare.py [MODELS_DIR] [RUNS]   (defaults: target/onnx-models, 20;
       build the models with scripts/onnx_models.py; needs onnx, onnxruntime, numpy and
       `cargo build --release -p kiln-onnx --example onnx`)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

models = sys.argv[1] if len(sys.argv) > 1 else "target/onnx-models"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
kiln = os.path.join(os.path.dirname(__file__), "..", "target", "release", "examples", "onnx")
tmp = tempfile.mkdtemp()
print(f"onnxruntime {ort.__version__}, {runs} runs, medians")
print("| model | runtime | device | median ms | max abs diff vs onnxruntime |")
print("| --- | --- | --- | --- | --- |")
for name in sorted(f for f in os.listdir(models) if f.endswith(".onnx")):
    path = os.path.join(models, name)
    model = onnx.load(path)
    rng = np.random.default_rng(1)
    feeds, args = {}, []
    for inp in model.graph.input:
        dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        x = rng.standard_normal(dims).astype(np.float32)
        feeds[inp.name] = x
        pb = os.path.join(tmp, f"{name}.{inp.name}.pb")
        with open(pb, "wb") as f:
            f.write(numpy_helper.from_array(x, inp.name).SerializeToString())
        args += ["--input", f"{inp.name}={pb}"]
    opts = ort.SessionOptions()
    # onnx.load has read any external-data file: hand onnxruntime the whole model, since its
    # shape inference cannot read shape tensors kept outside the .onnx file.
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    print(f"| {name} | onnxruntime | cpu | {1e3 * np.median(times):.3f} | |")
    for device in ["cpu", "software"]:
        out = os.path.join(tmp, f"{name}.{device}.json")
        env = dict(os.environ, KILN_DEVICE=device)
        subprocess.run([kiln, path, *args, "--runs", str(runs), "--json", out], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        got = json.load(open(out))
        diff = 0.0
        for o, w in zip(model.graph.output, want):
            g = np.array(got["outputs"][o.name]["values"], dtype=np.float64).reshape(w.shape)
            diff = max(diff, float(np.max(np.abs(g - w))))
        label = "lavapipe" if device == "software" else "cpu"
        print(f"| {name} | kiln | {label} | {got['median_ms']:.3f} | {diff:.2e} |")
