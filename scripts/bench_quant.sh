#!/usr/bin/env bash
# Products with quantized and half-precision weights (issue 28), kiln beside ggml (llama.cpp's
# C, benches/peers/ggml) and candle's QMatMul (benches/peers/candle) on the CPU, in alternating
# rounds on one machine, all with every core; then kiln on lavapipe. Prints the tables of
# BENCHMARKS.md ("Quantized weights"); the JSON lines stay under ${OUT:-bench-out}/quant/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-out}/quant
rm -rf "$out" && mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo build -q --release --example qbench
benches/peers/ggml/build.sh >/dev/null
(cd benches/peers/candle && cargo build -q --release)
kiln=target/release/examples/qbench
ggml=benches/peers/ggml/build/ggml-peer
candle=benches/peers/candle/target/release/candle-peer
threads=$(nproc)
types=f32,f16,q8_0,q4_0,q4_K,q6_K
shapes=4096x4096,11008x4096,4096x11008,8192x2048
echo "== machine"; lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200; git rev-parse --short HEAD
for r in $(seq 1 "${ROUNDS:-3}"); do
  stream=""; [ "$r" = 1 ] && stream=--stream
  $kiln --device cpu --dtypes $types --shapes $shapes --m 1,16 $stream > "$out/kiln-cpu-$r.json"
  $ggml bench "$threads" 9 $types $shapes 1,16 > "$out/ggml-$r.json"
  $candle --qmatmul $types $shapes 1,16 > "$out/candle-$r.json"
done
# Prefill-sized products, one round.
$kiln --device cpu --dtypes $types --shapes 4096x4096 --m 512 --reps 3 > "$out/kiln-cpu-prefill.json"
$ggml bench "$threads" 3 $types 4096x4096 512 > "$out/ggml-prefill.json"
$candle --qmatmul $types 4096x4096 512 > "$out/candle-prefill.json"
# lavapipe: an f32 11008×4096 weight (180 MB) passes its 128 MiB binding limit, so f32 there is
# measured at 4096×4096 only.
$kiln --device software --dtypes $types --shapes 4096x4096 --m 1,16 --reps 5 > "$out/kiln-lavapipe.json"
$kiln --device software --dtypes ${types#f32,} --shapes 11008x4096 --m 1 --reps 5 >> "$out/kiln-lavapipe.json"
python3 scripts/bench_quant.py "$out"/*.json
