#!/usr/bin/env bash
# The soak test: KILN_SOAK_STEPS (default 10000) digits training steps on every GPU adapter
# (lavapipe in CI), with live buffers, pooled bytes and resident memory checked flat, within a
# time budget (KILN_SOAK_SECONDS, default 3600). Prints the memory samples.
set -euo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export KILN_REQUIRE_GPU=1
timeout "${KILN_SOAK_SECONDS:-3600}" \
    cargo test --release --test examples soak_digits_training -- --ignored --nocapture
