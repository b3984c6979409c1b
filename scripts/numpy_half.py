#!/usr/bin/env python3
"""numpy's side of kiln's half-precision benchmark (examples/bench.rs --half): add, relu(x*y + x)
and a row softmax (rows of 4096) over N values in float32 and float16 (numpy has no bfloat16),
a new output each call. Prints one JSON object per line, as the bench's --json rows.

  python3 scripts/numpy_half.py 4194304
"""
import json
import statistics
import sys
import time

import numpy as np


def median_time(fn, warmup=2, reps=9):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


rng = np.random.default_rng(0)
for n in map(int, sys.argv[1:]):
    for dtype in (np.float32, np.float16):
        x = rng.standard_normal((-(-n // 4096), 4096)).astype(dtype)
        y = rng.standard_normal((-(-n // 4096), 4096)).astype(dtype)
        for op, fn in (("add", lambda: x + y), ("mul_add_relu", lambda: np.maximum(x * y + x, 0)),
                       ("softmax", lambda: softmax(x))):
            s = median_time(fn)
            name = {np.float32: "f32", np.float16: "f16"}[dtype]
            print(json.dumps({"op": op, "n": n, "dtype": name, "seconds": s}))
