#!/usr/bin/env bash
# Language-model speed on the CPU: kiln-llm beside llama.cpp (built from source, same thread
# count: all cores) and candle's quantized Llama (benches/peers/candle, candle-transformers 0.11,
# its rayon pool on all cores) on a model of SmolLM-135M's shape with random weights, in f16,
# q8_0 and q4_0: prefill tokens/s for a PROMPT-token prompt and decode tokens/s for DECODE greedy
# tokens. Rounds alternate the engines; medians and ratios are printed as Markdown tables.
#   scripts/bench_llm.sh [PROMPT=512] [DECODE=128] [ROUNDS=3]
# KILN_BEFORE=PATH adds another build's llm_bench (an earlier commit's) to every round, first.
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
cargo build -q --release --manifest-path benches/peers/candle/Cargo.toml
threads=$(nproc)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads threads; prompt $prompt, decode $decode, $rounds rounds"
out=$(mktemp)
for t in f16 q8_0 q4_0; do
    for r in $(seq "$rounds"); do
        if [ -n "${KILN_BEFORE:-}" ]; then
            KILN_DEVICE=cpu "$KILN_BEFORE" "$dir/smollm-135m-$t.gguf" "$prompt" "$decode" 1 |
                sed "s/^/$t before /" >>"$out"
        fi
        KILN_DEVICE=cpu target/release/examples/llm_bench "$dir/smollm-135m-$t.gguf" "$prompt" "$decode" 1 |
            sed "s/^/$t kiln /" >>"$out"
        benches/peers/ggml/build/llama-peer bench "$dir/smollm-135m-$t.gguf" "$threads" "$prompt" "$decode" 1 2>/dev/null |
            sed "s/^/$t llama.cpp /" >>"$out"
        benches/peers/candle/target/release/candle-peer --llm "$dir/smollm-135m-$t.gguf" "$prompt" "$decode" 1 |
            sed "s/^/$t candle /" >>"$out"
    done
done
"$python" - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, engine, js = line.split(" ", 2)
    rows.setdefault((t, engine), []).append(json.loads(js))
before = any(e == "before" for _, e in rows)
for phase in ("prefill", "decode"):
    print(f"\n{phase} tokens/s\n")
    head = "| weights |" + (" kiln before |" if before else "") + " kiln | llama.cpp | candle |"
    head += (" kiln / before |" if before else "") + " kiln / llama.cpp | kiln / candle |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for t in ("f16", "q8_0", "q4_0"):
        engines = (["before"] if before else []) + ["kiln", "llama.cpp", "candle"]
        med = {e: statistics.median(r[f"{phase}_tok_s"] for r in rows[(t, e)]) for e in engines}
        k, l, c = med["kiln"], med["llama.cpp"], med["candle"]
        cells = [f"{med[e]:.1f}" for e in engines]
        if before:
            cells.append(f"{k/med['before']:.2f}×")
        cells += [f"{k/l:.2f}×", f"{k/c:.2f}×"]
        print(f"| {t} | " + " | ".join(cells) + " |")
PY
rm -f "$out"
