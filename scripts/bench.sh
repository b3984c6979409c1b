#!/usr/bin/env bash
# The side-by-side runs behind BENCHMARKS.md, in one go on one machine:
#   kiln's CPU backend and numpy (its OpenBLAS; elementwise ops) on the same sizes, then kiln on the software
#   adapter with version 1 (tiled16) beside the autotuned kernels, then the MLP forward pass.
# Needs numpy (pip install numpy) and, for the GPU part, a Vulkan driver (lavapipe is enough).
# Writes JSON under ${OUT:-bench-out}/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench-out}
mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
# A private tuning cache, so the autotuner's first-use cost is visible in the log.
export KILN_CACHE_DIR="$out/cache"
rm -rf "$KILN_CACHE_DIR"
peer=../shared/bench/numpy_ref.py
cargo build -q --release --example bench
bench=target/release/examples/bench
# PEERS=1 adds candle's CPU backend (a separate project, benches/peers/candle; ~3 min to build),
# numpy's OpenBLAS loaded into a kiln process (benches/peers/openblas; ~2 min to build)
# and burn's wgpu (lavapipe) and CPU (flex) backends (benches/peers/burn; ~15 min the first
# time: keep its target/), and the quantized products beside ggml and candle
# (scripts/bench_quant.sh; ggml is built from llama.cpp's source, ~1 min).
candle=""
burn=""
openblas=""
if [ "${PEERS:-0}" = 1 ]; then
  (cd benches/peers/candle && cargo build -q --release)
  candle=benches/peers/candle/target/release/candle-peer
  (cd benches/peers/openblas && cargo build -q --release)
  openblas=benches/peers/openblas/target/release/openblas-peer
  (cd benches/peers/burn && cargo build -q --release)
  burn=benches/peers/burn/target/release/burn-peer
fi

echo "== machine"; lscpu | grep -E "Model name|^CPU\(s\)"; git rev-parse --short HEAD
echo "== CPU: kiln vs numpy (and candle with PEERS=1), ${ROUNDS:-5} alternating rounds (the machine is noisy: medians of rounds)"
for r in $(seq 1 "${ROUNDS:-5}"); do
  $bench --device cpu --matmul 256 512 1024 2048 --mlp 1024 64 256 256 10 \
    --elementwise 1048576 16777216 --json "$out/kiln-cpu-$r.json" > /dev/null
  python3 "$peer" --matmul 256 512 1024 2048 --mlp 1024 64 256 256 10 > "$out/numpy-$r.json"
  python3 scripts/numpy_elementwise.py 1048576 16777216 > "$out/numpy-elementwise-$r.json"
  if [ -n "$candle" ]; then
    $candle --matmul 256 512 1024 2048 --mlp 1024 64 256 256 10 > "$out/candle-$r.json"
  fi
done
python3 scripts/cpu_vs_numpy.py "$out" "${ROUNDS:-5}"
if [ -n "$openblas" ]; then
  echo "== CPU matmul: kiln vs numpy's OpenBLAS in one process, calls alternating (OpenBLAS time / kiln time)"
  $openblas --matmul 256 512 1024 2048 --rounds 9 | tee "$out/openblas-inprocess.json"
fi
echo "== lavapipe: version 1 vs tuned, skinny shapes, MLP"
$bench --device software --reps 5 --matmul 256 512 --configs tiled16,auto,f16 --json "$out/kiln-lavapipe-square.json"
$bench --device software --reps 5 --matmul 1x1024x1024 4x1024x1024 --configs blocked:32x32x8,auto --json "$out/kiln-lavapipe-skinny.json"
$bench --device software --reps 5 --mlp 1024 64 256 256 10 --elementwise 1048576 16777216 --json "$out/kiln-lavapipe-mlp.json"
if [ -n "$burn" ]; then
  # The issue-12 suite, kiln and burn alternating, every timed run ending in a readback.
  gpu_suite=(--matmul 256 512 1024 --mlp 1024 64 256 256 10 --conv 32 16 32 32 32 --rows 1024 4096 --chain 1048576)
  cpu_suite=(--matmul 512 1024 --conv 32 16 32 32 32)
  echo "== kiln vs burn: ${ROUNDS:-5} alternating rounds on lavapipe (burn wgpu + fusion) and the CPU (burn flex)"
  for r in $(seq 1 "${ROUNDS:-5}"); do
    $bench --device software --reps 5 --readback "${gpu_suite[@]}" --json "$out/kiln-lavapipe-peer-$r.json" > /dev/null
    $burn --backend wgpu --reps 5 "${gpu_suite[@]}" > "$out/burn-wgpu-$r.json"
    $bench --device cpu --readback "${cpu_suite[@]}" --json "$out/kiln-cpu-peer-$r.json" > /dev/null
    $burn --backend flex "${cpu_suite[@]}" > "$out/burn-flex-$r.json"
  done
  python3 scripts/burn_compare.py "$out" "${ROUNDS:-5}" kiln-lavapipe-peer:burn-wgpu kiln-cpu-peer:burn-flex
  echo "== first 512^3 matmul on lavapipe, empty tuning and shader caches, fresh processes"
  for r in 1 2 3; do
    cold=$(mktemp -d)
    KILN_CACHE_DIR="$cold/kiln" $bench --device software --first 512 | grep first_matmul
    XDG_CACHE_HOME="$cold/xdg" HOME="$cold" $burn --backend wgpu --first 512
    rm -rf "$cold"
  done
fi
if [ "${PEERS:-0}" = 1 ]; then
  echo "== quantized and half-precision weights: kiln vs ggml (llama.cpp) and candle's QMatMul"
  OUT="$out" scripts/bench_quant.sh
fi
