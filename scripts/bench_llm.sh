#!/usr/bin/env bash
# Language-model speed on the CPU: kiln-llm beside llama.cpp (built from source, same thread
# count: all cores) on a model of SmolLM-135M's shape with random weights, in f16, q8_0 and q4_0:
# prefill tokens/s for a PROMPT-token prompt and decode tokens/s for DECODE greedy tokens.
# Rounds alternate kiln and llama.cpp; medians and the ratio are printed as a Markdown table.
#   scripts/bench_llm.sh [PROMPT=512] [DECODE=128] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt=${1:-512} decode=${2:-128} rounds=${3:-3}
python=${KILN_VENV:-.venv}/bin/python3
[ -x "$python" ] || python=python3
benches/peers/ggml/build.sh
dir=target/llm-bench
if [ ! -f "$dir/smollm-135m-q4_0.gguf" ]; then
    "$python" scripts/llm_models.py --bench "$dir" benches/peers/ggml/build/llama-peer
fi
cargo build -q --release -p kiln-llm --example llm_bench
threads=$(nproc)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads; prompt $prompt, decode $decode, $rounds rounds"
out=$(mktemp)
for t in f16 q8_0 q4_0; do
    for r in $(seq "$rounds"); do
        KILN_DEVICE=cpu target/release/examples/llm_bench "$dir/smollm-135m-$t.gguf" "$prompt" "$decode" 1 |
            sed "s/^/$t kiln /" >>"$out"
        benches/peers/ggml/build/llama-peer bench "$dir/smollm-135m-$t.gguf" "$threads" "$prompt" "$decode" 1 2>/dev/null |
            sed "s/^/$t llama.cpp /" >>"$out"
    done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, engine, js = line.split(" ", 2)
    rows.setdefault((t, engine), []).append(json.loads(js))
print("| weights | kiln prefill tok/s | llama.cpp prefill | ratio | kiln decode tok/s | llama.cpp decode | ratio |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for t in ("f16", "q8_0", "q4_0"):
    med = lambda e, k: statistics.median(r[k] for r in rows[(t, e)])
    kp, lp = med("kiln", "prefill_tok_s"), med("llama.cpp", "prefill_tok_s")
    kd, ld = med("kiln", "decode_tok_s"), med("llama.cpp", "decode_tok_s")
    print(f"| {t} | {kp:.0f} | {lp:.0f} | {kp/lp:.2f}× | {kd:.1f} | {ld:.1f} | {kd/ld:.2f}× |")
PY
rm -f "$out"
