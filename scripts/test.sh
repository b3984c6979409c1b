#!/usr/bin/env bash
# Runs kiln's test suite with the GPU tests required to run.
#
# If no Vulkan driver is installed, installs Mesa's software one (lavapipe) first: on
# Debian/Ubuntu as root through apt-get, otherwise it says what to install. Then runs
# `cargo test` with KILN_REQUIRE_GPU=1, so that "no adapter" fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

have_vulkan_driver() {
    local d
    for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
        if compgen -G "$d/*.json" >/dev/null; then
            return 0
        fi
    done
    return 1
}

if ! have_vulkan_driver; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "scripts/test.sh: no Vulkan driver found; installing mesa-vulkan-drivers (lavapipe)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq mesa-vulkan-drivers >/dev/null
    else
        echo "scripts/test.sh: no Vulkan driver found. Install Mesa's (Debian/Ubuntu: apt-get install mesa-vulkan-drivers) and run again." >&2
        exit 1
    fi
fi

# Mesa warns when this is unset; a private directory keeps the output clean.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export KILN_REQUIRE_GPU=1
# Name the adapters (and auto's choice) in the log, so a reader can see where the GPU tests ran.
cargo run -q --example info
cargo test --all-targets "$@"
cargo test --doc
