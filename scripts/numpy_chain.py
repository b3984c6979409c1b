"""numpy peer for `bench --chain N`: the same two 16-op chains over N float32 values.

Prints JSON rows like the bench's; median of 9 runs after 2 warm-ups. numpy runs each op as its
own pass (no fusion), with in-place operations where the chain allows none.
"""
import json, sys, time
import numpy as np

def median_ms(f, reps=9):
    for _ in range(2):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[reps // 2] * 1e3

def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))

for n in map(int, sys.argv[1:] or ["1048576"]):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(n, dtype=np.float32)
    y = rng.random(n, dtype=np.float32)
    def mixed():
        h = np.maximum((x + np.float32(0.5)) * y, 0) * np.float32(0.9)
        h = sigmoid(np.tanh(h - y) + y)
        h = np.abs(np.maximum(h * np.float32(1.1) - np.float32(0.2), y))
        h = h * y + np.float32(0.1)
        return h * sigmoid(h) / np.float32(2.0)
    def arith():
        h = x
        for k in range(4):
            h = np.maximum(h * np.float32(1.01) + y, 0) - np.float32(0.1 * k)
        return h
    for name, f in [("chain16_mixed", mixed), ("chain16_arith", arith)]:
        print(json.dumps({"op": name, "size": str(n), "peer": "numpy " + np.__version__, "ms": median_ms(f)}))
