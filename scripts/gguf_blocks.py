#!/usr/bin/env python3
"""Writes the GGUF-format fixtures of tests/packed.rs into the directory given (default
target/gguf-blocks), with the `gguf` package (llama.cpp's own Python reader and writer):

  values.f32            f32 test values, 16 rows of 256 (random, plus edge blocks: zeros, a
                        constant, ties, a block whose largest magnitude is negative, tiny values)
  <t>.quantized         gguf.quants.quantize(values, t) for t in f16, bf16, q8_0, q4_0
  <t>.blocks            random valid blocks of t (q8_0, q4_0, q4_K, q6_K), finite scales
  <t>.decoded           gguf.quants.dequantize(blocks, t), as f32

gguf writes the K-quants' blocks but not their quantizers (it has no q4_K/q6_K quantize), so
those are checked by decoding only.
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "gguf-blocks")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(20261206)

rows = [rng.standard_normal(256).astype(np.float32) * s for s in (1.0, 0.01, 30.0)]
rows.append(np.zeros(256, np.float32))
rows.append(np.full(256, 0.75, np.float32))
# Values whose scaled form lands on .5 steps (ties for roundf, and q4_0's +8.5 truncation).
ties = (np.arange(256, dtype=np.float32) % 17 - 8) * np.float32(0.5)
ties[::32] = np.float32(-8.0)
rows.append(ties)
neg = rng.uniform(-1, 1, 256).astype(np.float32)
neg[::32] = -4.0
rows.append(neg)
rows.append((rng.standard_normal(256) * 1e-6).astype(np.float32))
rows.append(rng.uniform(-65504, 65504, 256).astype(np.float32))
while len(rows) < 16:
    rows.append((rng.standard_normal(256) * rng.uniform(0.1, 10)).astype(np.float32))
values = np.stack(rows)
values.tofile(os.path.join(out, "values.f32"))

for name, t in [("f16", Q.F16), ("bf16", Q.BF16), ("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0)]:
    if t == Q.F16:
        q = values.astype(np.float16).view(np.uint8)
    else:
        q = quants.quantize(values, t)
    q.tofile(os.path.join(out, f"{name}.quantized"))


def f16_bytes(v):
    return np.asarray(v, np.float16).view(np.uint8).reshape(-1, 2)


for name, t, size in [("q8_0", Q.Q8_0, 34), ("q4_0", Q.Q4_0, 18), ("q4_K", Q.Q4_K, 144), ("q6_K", Q.Q6_K, 210)]:
    per_row = 256 // (32 if size in (34, 18) else 256)
    n = 8 * per_row
    blocks = rng.integers(0, 256, (n, size), dtype=np.uint8)
    if name in ("q8_0", "q4_0"):
        blocks[:, 0:2] = f16_bytes(rng.uniform(-0.05, 0.05, n))
    elif name == "q4_K":
        blocks[:, 0:2] = f16_bytes(rng.uniform(0, 0.01, n))
        blocks[:, 2:4] = f16_bytes(rng.uniform(0, 0.01, n))
    else:
        blocks[:, 208:210] = f16_bytes(rng.uniform(-0.005, 0.005, n))
    data = blocks.reshape(8, -1)
    data.tofile(os.path.join(out, f"{name}.blocks"))
    quants.dequantize(data, t).astype(np.float32).tofile(os.path.join(out, f"{name}.decoded"))

open(os.path.join(out, "done"), "w").close()
print(f"gguf_blocks.py: wrote the fixtures into {out}")
