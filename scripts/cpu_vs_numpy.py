#!/usr/bin/env python3
"""Summarise scripts/bench.sh's alternating CPU rounds: per op and size, the median over rounds
of kiln's and numpy's time, the ratio of the medians, and the range of per-round ratios."""
import json
import statistics
import sys

out, rounds = sys.argv[1], int(sys.argv[2])
kiln, numpy, ratios = {}, {}, {}


def key_of(op, size):
    return ("mlp", 0) if op == "mlp_forward" else (op, size)


for r in range(1, rounds + 1):
    k = {}
    for row in json.load(open(f"{out}/kiln-cpu-{r}.json")):
        k[key_of(row["op"], int(row["size"].split("x")[0]))] = row["seconds"]
    n = {}
    for name in (f"numpy-{r}.json", f"numpy-elementwise-{r}.json"):
        try:
            lines = open(f"{out}/{name}").read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            row = json.loads(line)
            n[key_of(row["op"], row.get("n", 0))] = row["seconds"]
    for key in k:
        if key in n:
            kiln.setdefault(key, []).append(k[key])
            numpy.setdefault(key, []).append(n[key])
            ratios.setdefault(key, []).append(n[key] / k[key])
print("| op, size | kiln CPU (median) | numpy (median) | kiln / numpy speed | per-round range |")
print("| --- | --- | --- | --- | --- |")
for key in kiln:
    tk, tn = statistics.median(kiln[key]), statistics.median(numpy[key])
    op, size = key
    if op == "mlp":
        what, rate_k, rate_n = "MLP forward", f"{tk * 1e3:.2f} ms", f"{tn * 1e3:.2f} ms"
    elif op == "matmul":
        flops = 2 * size**3
        what = f"matmul {size}"
        rate_k = f"{flops / tk / 1e9:.0f} GFLOP/s"
        rate_n = f"{flops / tn / 1e9:.0f} GFLOP/s"
    else:
        moved = (8 if op == "relu" else 12) * size
        what = f"{op} {size:,} values"
        rate_k = f"{moved / tk / 1e9:.1f} GB/s"
        rate_n = f"{moved / tn / 1e9:.1f} GB/s"
    lo, hi = min(ratios[key]), max(ratios[key])
    print(f"| {what} | {rate_k} | {rate_n} | **{tn / tk:.2f}×** | {lo:.2f}–{hi:.2f}× |")
