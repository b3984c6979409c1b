#!/usr/bin/env bash
# Builds llama.cpp's peers of kiln from the source that the llama-cpp-sys-2 crate vendors, pinned
# by version and checksum (fetch/Cargo.lock), with the CPU backend for this machine's ISA
# (GGML_NATIVE) and OpenMP, as llama.cpp builds by default:
#   build/ggml-peer    ggml's own quantizers and quantized products (tests/packed.rs, qbench)
#   build/llama-peer   libllama: tokenizer, logits, generation, quantizer (crates/kiln-llm)
# Needs cmake and a C/C++ compiler (Debian: apt-get install cmake g++); about 2 min on 2 cores,
# then nothing until this script, a peer program or the pinned version changes.
set -euo pipefail
cd "$(dirname "$0")"
# Built already from this source and these peer programs: nothing to do.
stamp="llama-cpp-sys-2 0.1.161 $(sha256sum ggml_peer.c llama_peer.c build.sh | sha256sum | cut -c1-16)"
if [ -x build/ggml-peer ] && [ -x build/llama-peer ] && [ "$(cat build/stamp 2>/dev/null)" = "$stamp" ]; then
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
rm -rf build && mkdir -p build && cp -r "$src/llama.cpp" build/llama-src
touch build/llama-src/ggml/ggml.pc.in
# Without AMX where the CPU has it (Sapphire Rapids): this version's AMX products crash
# (SIGSEGV in ggml_backend_amx_mul_mat) on the q8_0 test models; its AVX-512 kernels run instead.
noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S build/llama-src -B build/llama -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DCMAKE_C_FLAGS="$noamx" -DCMAKE_CXX_FLAGS="$noamx" \
    -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF -DGGML_BUILD_TESTS=OFF \
    -DGGML_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_HTML=OFF >/dev/null
# llama.cpp's sources warn a lot under GCC 12: keep the log, show it only on failure.
if ! cmake --build build/llama -j "$(nproc)" --target llama >build/llama.log 2>&1; then
    tail -50 build/llama.log >&2
    exit 1
fi
libs=$(find build/llama/ggml -name 'libggml*.a' | sort -r)
inc="-I $src/llama.cpp/include -I $src/llama.cpp/ggml/include"
gcc -O2 -std=gnu11 $inc ggml_peer.c $libs $libs -fopenmp -lstdc++ -lm -o build/ggml-peer
gcc -O2 -std=gnu11 $inc -c llama_peer.c -o build/llama_peer.o
g++ build/llama_peer.o build/llama/src/libllama.a $libs $libs -fopenmp -lm -o build/llama-peer
rm -rf build/llama-src
echo "$stamp" > build/stamp
echo "built benches/peers/ggml/build/{ggml-peer,llama-peer} (llama.cpp from llama-cpp-sys-2 0.1.161)"
