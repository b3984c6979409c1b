#!/usr/bin/env python3
"""PyTorch on an NVIDIA GPU as the peer of kiln's quantized products (examples/qbench.rs's JSON
lines): `x @ w.T` with w of N×K in f32 and f16 (torch.matmul), and int8 × int8 → int32
(torch._int_mm, where the shape allows it), timed with CUDA events, median of 20 after 5
warm-ups. Run by .gpu/run.sh (scripts/gpu_prepare.sh) beside `qbench --device gpu`.

    python3 scripts/torch_quant.py --shapes 4096x4096,11008x4096 --m 1,16,512
"""
import argparse
import json
import statistics

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--shapes", default="4096x4096,11008x4096,4096x11008,8192x2048")
ap.add_argument("--m", default="1,16,512")
args = ap.parse_args()
dev = torch.device("cuda")
name = torch.cuda.get_device_name(0)


def median_ms(f):
    for _ in range(5):
        f()
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


for shape in args.shapes.split(","):
    n, k = (int(v) for v in shape.split("x"))
    for m in (int(v) for v in args.m.split(",")):
        for dtype, tdtype, size in (("f32", torch.float32, 4), ("f16", torch.float16, 2), ("int8", torch.int8, 1)):
            if dtype == "int8":
                # torch._int_mm: int8 [m, k] × int8 [k, n] → int32; CUDA needs m > 16 and
                # k, n multiples of 8.
                if m <= 16:
                    continue
                w = torch.randint(-127, 127, (n, k), dtype=tdtype, device=dev)
                x = torch.randint(-127, 127, (m, k), dtype=tdtype, device=dev)
                wt = w.t()
                try:
                    ms = median_ms(lambda: torch._int_mm(x, wt))
                except RuntimeError as e:
                    print(json.dumps({"engine": "torch", "dtype": dtype, "m": m, "n": n, "k": k, "error": str(e)[:200]}))
                    continue
            else:
                w = (torch.randn(n, k, device=dev) * 0.02).to(tdtype)
                x = torch.randn(m, k, device=dev).to(tdtype)
                ms = median_ms(lambda: x @ w.t())
            s = ms / 1e3
            print(json.dumps({
                "engine": "torch", "device": name, "dtype": dtype, "m": m, "n": n, "k": k,
                "ms": round(ms, 4), "gbs": round(n * k * size / s / 1e9, 2),
                "gflops": round(2 * m * n * k / s / 1e9, 2),
            }), flush=True)
