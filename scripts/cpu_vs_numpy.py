#!/usr/bin/env python3
"""Summarise scripts/bench.sh's alternating CPU rounds: per size, the median over rounds of
kiln's and numpy's time, the ratio of the medians, and the range of per-round ratios."""
import json
import statistics
import sys

out, rounds = sys.argv[1], int(sys.argv[2])
kiln, numpy, ratios = {}, {}, {}
for r in range(1, rounds + 1):
    k = {}
    for row in json.load(open(f"{out}/kiln-cpu-{r}.json")):
        key = "mlp" if row["op"] == "mlp_forward" else int(row["size"].split("x")[0])
        k[key] = row["seconds"]
    n = {}
    for line in open(f"{out}/numpy-{r}.json"):
        row = json.loads(line)
        key = "mlp" if row["op"] == "mlp_forward" else row["n"]
        n[key] = row["seconds"]
    for key in k:
        kiln.setdefault(key, []).append(k[key])
        numpy.setdefault(key, []).append(n[key])
        ratios.setdefault(key, []).append(n[key] / k[key])
print("| size | kiln CPU (median) | numpy (median) | kiln / numpy speed | per-round range |")
print("| --- | --- | --- | --- | --- |")
for key in kiln:
    tk, tn = statistics.median(kiln[key]), statistics.median(numpy[key])
    if key == "mlp":
        what, rate_k, rate_n = "MLP forward", f"{tk * 1e3:.2f} ms", f"{tn * 1e3:.2f} ms"
    else:
        flops = 2 * key**3
        what = f"matmul {key}"
        rate_k = f"{flops / tk / 1e9:.0f} GFLOP/s"
        rate_n = f"{flops / tn / 1e9:.0f} GFLOP/s"
    lo, hi = min(ratios[key]), max(ratios[key])
    print(f"| {what} | {rate_k} | {rate_n} | **{tn / tk:.2f}×** | {lo:.2f}–{hi:.2f}× |")
