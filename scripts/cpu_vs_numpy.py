#!/usr/bin/env python3
"""Summarise scripts/bench.sh's alternating CPU rounds: per op and size, the median over rounds
of kiln's and each peer's time (numpy; candle when its files are there), the ratio of the
medians, and the range of per-round ratios."""
import json
import statistics
import sys

out, rounds = sys.argv[1], int(sys.argv[2])


def key_of(op, size):
    return ("mlp", 0) if op == "mlp_forward" else (op, size)


def peer_rows(names):
    """Seconds by key from JSON-lines files (missing files are skipped)."""
    rows = {}
    for name in names:
        try:
            lines = open(f"{out}/{name}").read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            row = json.loads(line)
            rows[key_of(row["op"], row.get("n", 0))] = row["seconds"]
    return rows


peers = {"numpy": lambda r: [f"numpy-{r}.json", f"numpy-elementwise-{r}.json"],
         "candle": lambda r: [f"candle-{r}.json"]}
kiln = {}
times = {p: {} for p in peers}
for r in range(1, rounds + 1):
    k = {}
    for row in json.load(open(f"{out}/kiln-cpu-{r}.json")):
        k[key_of(row["op"], int(row["size"].split("x")[0]))] = row["seconds"]
    for key, t in k.items():
        kiln.setdefault(key, []).append(t)
    for p, files in peers.items():
        for key, t in peer_rows(files(r)).items():
            if key in k:
                times[p].setdefault(key, []).append((t, k[key]))
present = [p for p in peers if times[p]]


def rate(key, t):
    op, size = key
    if op == "mlp":
        return f"{t * 1e3:.2f} ms"
    if op == "matmul":
        return f"{2 * size**3 / t / 1e9:.0f} GFLOP/s"
    return f"{(8 if op == 'relu' else 12) * size / t / 1e9:.1f} GB/s"


def name(key):
    op, size = key
    if op == "mlp":
        return "MLP forward"
    return f"matmul {size}" if op == "matmul" else f"{op} {size:,} values"


head = "| op, size | kiln CPU |"
rule = "| --- | --- |"
for p in present:
    head += f" {p} | kiln / {p} speed (rounds) |"
    rule += " --- | --- |"
print(head)
print(rule)
for key in kiln:
    row = f"| {name(key)} | {rate(key, statistics.median(kiln[key]))} |"
    for p in present:
        pairs = times[p].get(key)
        if not pairs:
            row += " | |"
            continue
        tp = statistics.median(t for t, _ in pairs)
        tk = statistics.median(t for _, t in pairs)
        ratios = [t / k for t, k in pairs]
        row += f" {rate(key, tp)} | **{tp / tk:.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}×) |"
    print(row)
