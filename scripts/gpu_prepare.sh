#!/usr/bin/env bash
# Prepares the one device call of a session with a lent NVIDIA GPU. ../shared/gpu/check.sh
# builds the test binaries, the bench and the examples, and packs them with the Vulkan loader
# into .gpu/ and .gl/. NVIDIA's Vulkan ICD (libGLX_nvidia.so.0) also needs glvnd, which the GPU
# machine lacks: without it wgpu found no adapter there (BENCHMARKS.md, "First real GPU"), so
# glvnd's packages join .gl/, whose every .deb the run unpacks.
# Then: the device tool's run of `bash .gpu/run.sh` carrying [".gpu", ".gl"].
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/check.sh
o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$PWD/.gl-apt"
mkdir -p .gl-apt/partial
[ -n "$(ls .gl-apt/*Packages* 2>/dev/null)" ] || apt-get $o update -qq
(cd .gl && apt-get $o download -qq libglvnd0 libegl1 libgl1 libglx0 libgles2 libopengl0)
ls .gl
# The quantized products (issue 28) beside PyTorch in the same call: kiln's qbench on the GPU,
# then torch f32/f16 matmul and torch._int_mm, each printing qbench's JSON lines.
cp scripts/torch_quant.py .gpu/
python3 - <<'PY'
run = open(".gpu/run.sh").read()
extra = (
    'timeout 120 .gpu/bin/qbench --device gpu --dtypes f32,f16,q8_0,q4_0,q4_K,q6_K '
    '--shapes 4096x4096,11008x4096 --m 1,16,512 > "$OUT/qbench.json" 2>&1; echo "qbench: rc=$?" >> "$s"\n'
    'timeout 90 python3 .gpu/torch_quant.py --shapes 4096x4096,11008x4096 --m 1,16,512 '
    '> "$OUT/torch_quant.json" 2>&1; echo "torch_quant: rc=$?" >> "$s"\n'
)
run = run.replace('cat "$s"\n', extra + 'cat "$s"\n')
open(".gpu/run.sh", "w").write(run)
PY
grep -q qbench .gpu/run.sh && echo "gpu_prepare.sh: .gpu/run.sh also runs qbench and torch_quant.py"

