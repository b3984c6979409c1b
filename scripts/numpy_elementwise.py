#!/usr/bin/env python3
"""numpy's side of kiln's CPU elementwise benchmark (examples/bench.rs --elementwise):
relu (np.maximum(x, 0)) and add (x + y) on f32 vectors, a new output each call, as kiln's ops
make one. Prints one JSON object per line; rates count bytes read and written (8 per value
for relu, 12 for add), as kiln's bench does.

  python3 scripts/numpy_elementwise.py 1048576 16777216
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


rng = np.random.default_rng(0)
for n in map(int, sys.argv[1:]):
    x = rng.standard_normal(n, dtype=np.float32)
    y = rng.standard_normal(n, dtype=np.float32)
    for op, fn, bytes_per in (("relu", lambda: np.maximum(x, 0), 8), ("add", lambda: x + y, 12)):
        s = median_time(fn)
        print(json.dumps({"op": op, "n": n, "seconds": s, "gb_per_s": bytes_per * n / s / 1e9}))
