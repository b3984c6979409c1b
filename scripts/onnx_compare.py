#!/usr/bin/env python3
"""Runs each ONNX model in a folder with onnxruntime (CPU) and with kiln
(crates/kiln-onnx/examples/onnx.rs) on the same input, in one run, alternating the two
`ROUNDS` times (kiln first in each round: onnxruntime's threads keep spinning for a while
after a run, which would slow a kiln process started right after it): the median time of a run (outputs read back) on each, their ratio, and the
largest absolute difference between the outputs.

Inputs: a model's stored inputs `<name>.in<k>.pb` where they exist (the zoo that
scripts/onnx_published.py writes), `<name>.input.pb` next (scripts/onnx_models.py), else
seeded normal values with every symbolic dimension 1.

usage: scripts/onnx_compare.py [MODELS_DIR] [RUNS] [ROUNDS] [DEVICES]
       defaults: target/onnx-models, 20 runs per round, 3 rounds, DEVICES "cpu,software"
       (kiln's CPU backend and lavapipe; KILN_DEVICE's names). Needs onnx, onnxruntime, numpy
       and `cargo build --release -p kiln-onnx --example onnx` (or the binary that
       KILN_ONNX_EXAMPLE names, to compare two builds).
"""
import json
import os
import platform
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
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
devices = (sys.argv[4] if len(sys.argv) > 4 else "cpu,software").split(",")
kiln = os.environ.get("KILN_ONNX_EXAMPLE") or os.path.join(
    os.path.dirname(__file__), "..", "target", "release", "examples", "onnx")
tmp = tempfile.mkdtemp()


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def feeds_for(name, model):
    base = os.path.join(models, name[: -len(".onnx")])
    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    stored = [f"{base}.in{k}.pb" for k in range(len(inputs))]
    if len(inputs) == 1 and os.path.exists(f"{base}.input.pb"):
        stored = [f"{base}.input.pb"]
    feeds, args = {}, []
    rng = np.random.default_rng(1)
    for inp, path in zip(inputs, stored):
        if os.path.exists(path):
            t = onnx.TensorProto()
            t.ParseFromString(open(path, "rb").read())
            x = numpy_helper.to_array(t)
        else:
            dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
            x = rng.standard_normal(dims).astype(np.float32)
            path = os.path.join(tmp, f"{name}.{inp.name}.pb")
            with open(path, "wb") as f:
                f.write(numpy_helper.from_array(x, inp.name).SerializeToString())
        feeds[inp.name] = x
        args += ["--input", f"{inp.name}={path}"]
    return feeds, args


print(f"onnxruntime {ort.__version__}, {cpu_model()}, {os.cpu_count()} cores; "
      f"{rounds} alternating rounds of {runs} runs; median of the round medians")
print("| model | onnxruntime ms | " + " | ".join(
    f"kiln {'lavapipe' if d == 'software' else d} ms | ratio | max abs diff" for d in devices) + " |")
print("| --- | --- |" + " --- | --- | --- |" * len(devices))
ratios = {d: [] for d in devices}
for name in sorted(f for f in os.listdir(models) if f.endswith(".onnx")):
    path = os.path.join(models, name)
    model = onnx.load(path)
    feeds, args = feeds_for(name, model)
    # onnx.load has read any external-data file: hand onnxruntime the whole model, since its
    # shape inference cannot read shape tensors kept outside the .onnx file.
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    ort_ms, kiln_ms, diffs = [], {d: [] for d in devices}, {d: 0.0 for d in devices}
    failed = {}
    for _ in range(rounds):
        time.sleep(0.1)  # let onnxruntime's threads stop spinning
        for device in devices:
            if device in failed:
                continue
            out = os.path.join(tmp, f"{name}.{device}.json")
            env = dict(os.environ, KILN_DEVICE=device)
            run = subprocess.run([kiln, path, *args, "--runs", str(runs), "--json", out],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
            if run.returncode != 0:
                failed[device] = run.stderr.strip().splitlines()[-1][:60]
                continue
            got = json.load(open(out))
            kiln_ms[device].append(got["median_ms"])
            for o, w in zip(model.graph.output, want):
                g = np.array(got["outputs"][o.name]["values"], dtype=np.float64).reshape(w.shape)
                diffs[device] = max(diffs[device], float(np.max(np.abs(g - w))))
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t)
        ort_ms.append(1e3 * float(np.median(times)))
    o = float(np.median(ort_ms))
    cells = []
    for d in devices:
        if d in failed:
            cells.append(f"fails: {failed[d]} | | ")
            continue
        k = float(np.median(kiln_ms[d]))
        ratios[d].append(k / o)
        cells.append(f"{k:.3f} | {k / o:.2f}× | {diffs[d]:.1e}")
    print(f"| {name[:-5]} | {o:.3f} | " + " | ".join(cells) + " |", flush=True)
for d in devices:
    r = sorted(ratios[d])
    if r:
        print(f"kiln {d} / onnxruntime: median {np.median(r):.2f}×, worst {r[-1]:.2f}×")
