#!/usr/bin/env bash
# Builds benches/peers/ggml/build/ggml-peer: ggml (llama.cpp's tensor library) from the source
# that the llama-cpp-sys-2 crate vendors, pinned by version and checksum (fetch/Cargo.lock),
# with its CPU backend for this machine's ISA (GGML_NATIVE) and OpenMP, as llama.cpp builds by
# default. Needs cmake and a C/C++ compiler (Debian: apt-get install cmake g++). ~3 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
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
cmake --build build/ggml -j "$(nproc)" >/dev/null
libs=$(find build/ggml -name 'libggml*.a' | sort -r)
gcc -O2 -std=gnu11 -I "$src/llama.cpp/ggml/include" ggml_peer.c $libs $libs -fopenmp -lstdc++ -lm \
    -o build/ggml-peer
echo "built benches/peers/ggml/build/ggml-peer (ggml from llama-cpp-sys-2 0.1.161)"
