#!/usr/bin/env bash
# The layer rules of ARCHITECTURE.md ("Who may use whom"), checked on the source: each rule
# names a set of files and the paths they must not name in code (comments are skipped). Exits 1
# and prints every violation; `--self-test` plants a violation of each rule in a scratch copy
# of the tree and fails unless every one is caught (CI runs both).
set -euo pipefail
cd "$(dirname "$0")/.."

# rule: "files (a glob relative to the root) | forbidden pattern (grep -E) | why"
rules=(
  "src/gpu src/cpu|crate::(tensor|graph|capture|autograd|nn|storage|device)\b|\bTensor\b|\bGraph\b|a backend knows nothing above the storage seam"
  "src/tensor|crate::(gpu|cpu|graph|nn)\b|\bwgpu::|\bGpuContext\b|the tensor layer asks storage, never a backend"
  "src/nn|crate::(storage|gpu|cpu)\b|\bwgpu::|nn/ uses the public API (and the device's capture hooks)"
  "src/storage.rs src/device|crate::(tensor|graph|autograd|nn)\b|\bTensor\b|the seam and the devices sit below the tensor layer"
  "src/op|crate::[a-z_]+|use crate::|the op registry uses nothing but std"
  "src/shape.rs src/strided.rs src/dft.rs src/conv.rs src/attention.rs src/matmul_plan.rs src/optim_params.rs src/dtype.rs src/quant src/error.rs src/random.rs src/fusion.rs|crate::(tensor|graph|autograd|nn|storage|device|gpu|cpu)\b|the shared modules are backend-neutral and below everything"
  "crates|kiln::(gpu|cpu|storage|tensor)\b|member crates use kiln's public API only"
)

# Prints `file:line: text` for each code line under $1 (files or folders) matching the pattern
# $2, skipping comments; the op registry's own `crate::op` paths are its own.
scan() {
  local files=$1 pattern=$2
  # shellcheck disable=SC2086
  grep -rnE --include='*.rs' "$pattern" $files 2>/dev/null \
    | grep -vE '^[^:]+:[0-9]+:\s*//' \
    | grep -vE '^src/op/[^:]+:[0-9]+:.*crate::op\b' \
    || true
}

check() {
  local failed=0 rule files rest why pattern found
  for rule in "${rules[@]}"; do
    files=${rule%%|*}
    rest=${rule#*|}
    why=${rest##*|}
    pattern=${rest%|*}
    found=$(scan "$files" "$pattern")
    if [ -n "$found" ]; then
      echo "layers: $why ($files must not name: $pattern)"
      echo "$found" | sed 's/^/  /'
      failed=1
    fi
  done
  return $failed
}

if [ "${1:-}" = "--self-test" ]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  plants=(
    "src/gpu/pool.rs|use crate::tensor::Tensor;"
    "src/cpu/mod.rs|use crate::graph::Graph;"
    "src/tensor/mod.rs|use crate::gpu::context::GpuContext;"
    "src/nn/mod.rs|use crate::storage::Storage;"
    "src/storage.rs|use crate::tensor::Tensor;"
    "src/op/mod.rs|use crate::shape::Shape;"
    "src/shape.rs|use crate::device::Device;"
    "crates/kiln-onnx/src/lib.rs|use kiln::gpu::MemoryStats;"
  )
  for plant in "${plants[@]}"; do
    file=${plant%%|*}
    line=${plant#*|}
    rm -rf "$scratch/tree" && mkdir -p "$scratch/tree"
    cp -r src crates "$scratch/tree/"
    echo "$line" >> "$scratch/tree/$file"
    if (cd "$scratch/tree" && check >/dev/null); then
      echo "layers --self-test: planting '$line' in $file was not caught" >&2
      exit 1
    fi
  done
  echo "layers --self-test: each of ${#plants[@]} planted violations was caught"
  exit 0
fi

if check; then
  echo "layers: every rule holds"
else
  exit 1
fi
