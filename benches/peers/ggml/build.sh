#!/usr/bin/env bash
# Builds benches/peers/ggml/build/ggml-peer: ggml (llama.cpp's tensor library) from the source
# that the llama-cpp-sys-2 crate vendors, pinned by version and checksum (fetch/Cargo.lock),
# with its CPU backend for this machine's ISA (GGML_NATIVE) and OpenMP, as llama.cpp builds by
# default. Needs cmake and a C/C++ compiler (Debian: apt-get install cmake g++); about 1 min on 2
# cores, then nothing until this script, the peer program or the pinned version changes.
set -euo pipefail
cd "$(dirname "$0")"
# Built already from this source and this peer program: nothing to do.
stamp="llama-cpp-sys-2 0.1.161 $(sha256sum ggml_peer.c build.sh | sha256sum | cut -c1-16)"
if [ -x build/ggml-peer ] && [ "$(cat build/stamp 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
if ! command -v cmake >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq cmake >/dev/null
    else
        echo "benches/peers/ggml/build.sh: cmake is needed (apt-get install cmake)" >&2
        exit 1
    fi
fi
cargo fetch -q --manifest-path fetch/Cargo.toml
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-0.1.161 | head -1)
# The crate leaves out ggml's pkg-config template, which ggml's CMakeLists configures: build from
# a copy with an empty one.
rm -rf build/ggml-src build/ggml && mkdir -p build && cp -r "$src/llama.cpp/ggml" build/ggml-src
touch build/ggml-src/ggml.pc.in
cmake -S build/ggml-src -B build/ggml -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF -DGGML_BUILD_TESTS=OFF \
    -DGGML_BUILD_EXAMPLES=OFF >/dev/null
# ggml's sources warn a lot under GCC 12: keep the log, show it only on failure.
if ! cmake --build build/ggml -j "$(nproc)" >build/ggml.log 2>&1; then
    tail -50 build/ggml.log >&2
    exit 1
fi
libs=$(find build/ggml -name 'libggml*.a' | sort -r)
gcc -O2 -std=gnu11 -I "$src/llama.cpp/ggml/include" ggml_peer.c $libs $libs -fopenmp -lstdc++ -lm \
    -o build/ggml-peer
echo "$stamp" > build/stamp
echo "built benches/peers/ggml/build/ggml-peer (ggml from llama-cpp-sys-2 0.1.161)"
