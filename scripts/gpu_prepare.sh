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
