#!/usr/bin/env python3
"""Summarise scripts/bench.sh's alternating kiln/burn rounds (PEERS=1): per device pair, op and
size, the median over rounds of kiln's and burn's time, kiln's speed as a multiple of burn's
(burn's time / kiln's), and the range of the per-round ratios.

Usage: burn_compare.py OUT ROUNDS PAIR... where each PAIR is KILN_PREFIX:BURN_PREFIX, the files
being OUT/KILN_PREFIX-R.json (kiln's bench --json array) and OUT/BURN_PREFIX-R.json (burn-peer's
JSON lines) for rounds R = 1..ROUNDS."""
import json
import statistics
import sys

out, rounds, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]


def kiln_rows(path):
    rows = {}
    for row in json.load(open(path)):
        # The fused chain is the one burn's (fusing) backend is compared with.
        if row["op"].startswith("chain") and row["config"] != "fused":
            continue
        rows[(row["op"], row["size"])] = row["seconds"]
    return rows


def burn_rows(path):
    rows = {}
    for line in open(path).read().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[(row["op"], row["size"])] = row["seconds"]
    return rows


for pair in pairs:
    kp, bp = pair.split(":")
    both = {}
    for r in range(1, rounds + 1):
        k, b = kiln_rows(f"{out}/{kp}-{r}.json"), burn_rows(f"{out}/{bp}-{r}.json")
        for key in k.keys() & b.keys():
            both.setdefault(key, []).append((k[key], b[key]))
    print(f"\n{kp} vs {bp} ({rounds} rounds; speed = burn time / kiln time)")
    print(f"| op | size | kiln | burn | kiln / burn speed | per-round range |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (op, size), ts in sorted(both.items()):
        tk = statistics.median(t for t, _ in ts)
        tb = statistics.median(t for _, t in ts)
        ratios = [b / k for k, b in ts]
        print(f"| {op} | {size} | {tk * 1e3:.2f} ms | {tb * 1e3:.2f} ms | {tb / tk:.2f}× "
              f"| {min(ratios):.2f}–{max(ratios):.2f}× |")
