#!/usr/bin/env python3
"""Tables of the quantized-product runs (JSON lines of examples/qbench.rs, and of the ggml and
candle peers on the CPU and PyTorch on an NVIDIA GPU, scripts/torch_quant.py, in the same format) for BENCHMARKS.md: per weight type, shape and rows, the
median over rounds of each engine's time, kiln's speed against each peer (>1: kiln faster),
the weight bytes per second, and the share of the machine's read bandwidth (the `stream` line).

    python3 scripts/bench_quant.py FILE...
"""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)  # (engine, device, dtype, m, n, k) -> [ms]
gbs = defaultdict(list)
stream = []
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r["engine"] == "stream":
                stream.append(r["read_gbs"])
                continue
            if "ms" not in r:
                continue  # a peer's refusal (torch._int_mm on some shapes)
            # Peers on the CPU share kiln's "cpu"; a GPU peer (torch) is matched by shape.
            device = r.get("device", "cpu") if r["engine"] == "kiln" else "peer"
            key = (r["engine"], device, r["dtype"], r["m"], r["n"], r["k"])
            runs[key].append(r["ms"])
            gbs[key].append(r["gbs"])

bw = statistics.median(stream) if stream else None
if bw:
    print(f"memory read bandwidth (STREAM-style sum, all cores): {bw:.1f} GB/s\n")
devices = sorted({(k[1]) for k in runs if k[0] == "kiln"})
for dev in devices:
    peers = ["ggml", "candle"] if dev == "cpu" else ["torch"]
    head = "| type | N×K | m | kiln ms | kiln GB/s |"
    if bw and dev == "cpu":
        head += " % of read bw |"
    for p in peers:
        head += f" {p} ms | kiln vs {p} |"
    print(f"### {dev}\n")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    shapes = sorted({k[2:] for k in runs if k[0] == "kiln" and k[1] == dev},
                    key=lambda s: (s[2], s[3], s[1], ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K"].index(s[0]) if s[0] in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K"] else 9))
    for s in shapes:
        dtype, m, n, k = s
        kt = statistics.median(runs[("kiln", dev) + s])
        kg = statistics.median(gbs[("kiln", dev) + s])
        row = f"| {dtype} | {n}×{k} | {m} | {kt:.3f} | {kg:.1f} |"
        if bw and dev == "cpu":
            row += f" {100 * kg / bw:.0f}% |"
        for p in peers:
            pk = (p, "peer") + s
            if runs.get(pk):
                pt = statistics.median(runs[pk])
                row += f" {pt:.3f} | {pt / kt:.2f}× |"
            else:
                row += " – | – |"
        print(row)
    print()
