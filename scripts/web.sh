#!/usr/bin/env bash
# kiln in the browser (crates/kiln-web):
#   scripts/web.sh build   build the engine for wasm32 and the page's JS glue (www/pkg)
#   scripts/web.sh serve   build, then serve the demo page on http://127.0.0.1:${PORT:-8000}/
#   scripts/web.sh test    build, then run the page in headless Chromium on WebGPU
#                          (scripts/browser_test.py; screenshot in target/browser/)
#
# Toolchain: rustup's Rust has no wasm32 standard library here, so the std is built from
# source (-Zbuild-std) by Debian's browser Rust (rustc-web 1.96 with rust-web-src), which this
# script installs with Chromium and chromedriver when they are missing (apt, as root). The JS
# glue comes from crates/kiln-web/tools/bindgen: wasm-bindgen's own generator library at the
# exact version of wasm-bindgen in Cargo.lock, built once.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-build}

WEB_RUSTC=${KILN_WEB_RUSTC:-/usr/bin/rustc}
need=()
"$WEB_RUSTC" --print target-list 2>/dev/null | grep -qx wasm32-unknown-unknown \
    && [ -d "$("$WEB_RUSTC" --print sysroot 2>/dev/null)/lib/rustlib/src/rust/library" ] \
    || need+=(rustc-web rust-web-src rust-web-llvm lld-22)
if [ "$cmd" = test ]; then
    command -v chromium >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "scripts/web.sh: installing ${need[*]} (Debian's browser Rust and headless Chromium)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "scripts/web.sh: needs ${need[*]} (Debian 12 security suite: apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

build() {
    # The glue generator (native, with rustup's toolchain). A debug build: it compiles in half
    # the time of a release one (22 s against 47 s here) and runs once, in about a second.
    cargo build -q --manifest-path crates/kiln-web/tools/bindgen/Cargo.toml
    echo "scripts/web.sh: building kiln-web for wasm32-unknown-unknown with $("$WEB_RUSTC" --version)"
    RUSTC="$WEB_RUSTC" RUSTC_BOOTSTRAP=1 cargo build -q --release -p kiln-web \
        --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort --target-dir target-wasm
    crates/kiln-web/tools/bindgen/target/debug/kiln-bindgen \
        target-wasm/wasm32-unknown-unknown/release/kiln_web.wasm crates/kiln-web/www/pkg
    echo "scripts/web.sh: page in crates/kiln-web/www ($(du -k crates/kiln-web/www/pkg/kiln_web_bg.wasm | cut -f1) KiB of wasm)"
}

case "$cmd" in
build) build ;;
serve)
    build
    port=${PORT:-8000}
    echo "scripts/web.sh: serving http://127.0.0.1:$port/ (Ctrl-C to stop)"
    exec python3 -c '
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm", ".js": "text/javascript"}
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), functools.partial(H, directory=sys.argv[2])).serve_forever()
' "$port" crates/kiln-web/www
    ;;
test)
    build
    shift
    python3 scripts/browser_test.py crates/kiln-web/www target/browser "$@"
    ;;
*)
    echo "usage: scripts/web.sh build|serve|test" >&2
    exit 2
    ;;
esac
