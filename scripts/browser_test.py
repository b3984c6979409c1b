#!/usr/bin/env python3
"""The kiln-web page in headless Chromium on WebGPU, driven through chromedriver.

    scripts/browser_test.py WWW_DIR OUT_DIR [--onnx MODEL IN.pb OUT.pb]

Serves WWW_DIR (the page and its wasm-bindgen package) on 127.0.0.1, opens
index.html?autotest=1 in headless Chromium with WebGPU enabled, waits for the page's
window.kilnResult, saves a screenshot and the result under OUT_DIR, and checks:
- the page computed on WebGPU (the adapter's backend is "webgpu", not the CPU fallback);
- every op of kiln's op table agreed with its reference and the CPU backend (an op that could
  not run because it would block on a read-back is listed as such, and fails too);
- the digits classifier trained in the page reached >= 95% held-out accuracy;
- with --onnx, the model's outputs are within 1e-4 + 1e-3 * max|expected| of onnxruntime's;
- opened again without WebGPU, the page falls back to kiln's CPU backend with a visible note,
  passes the whole op table there and trains digits to >= 90% in 10 epochs.
Exit status 0 when all hold. Standard library only: WebDriver is JSON over HTTP.
"""
import base64
import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

TIMEOUT_S = int(os.environ.get("KILN_BROWSER_TIMEOUT", "900"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript"}

    def log_message(self, *args):
        pass


def webdriver(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["value"]
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"webdriver {method} {path}: {e.code} {e.read().decode(errors='replace')[:2000]}")


def run_page(www, out, query, webgpu, shot):
    """Opens index.html?QUERY in headless Chromium (WebGPU enabled or not), waits for the
    page's window.kilnResult, and saves a screenshot as OUT/SHOT; returns (result, seconds)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(Handler, directory=www))
    threading.Thread(target=server.serve_forever, daemon=True).start()

    dport = free_port()
    drv = subprocess.Popen([driver, f"--port={dport}"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{dport}"
    flags = ["--headless=new", "--no-sandbox", "--window-size=1200,1300",
             "--disable-dev-shm-usage", f"--user-data-dir={os.path.abspath(out)}/profile-{shot}"]
    if webgpu:
        flags.append("--enable-unsafe-webgpu")
    try:
        for _ in range(100):
            try:
                webdriver(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": flags},
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 600000},
        }}}
        session = webdriver(base, "POST", "/session", caps)["sessionId"]
        s = f"/session/{session}"
        start = time.time()
        webdriver(base, "POST", s + "/url", {"url": f"http://127.0.0.1:{port}/index.html?{query}"})
        result = None
        while time.time() - start < TIMEOUT_S:
            result = webdriver(base, "POST", s + "/execute/sync",
                               {"script": "return window.kilnResult || null", "args": []})
            if result is not None:
                break
            time.sleep(1)
        took = time.time() - start
        png = webdriver(base, "GET", s + "/screenshot")
        with open(os.path.join(out, shot), "wb") as f:
            f.write(base64.b64decode(png))
        try:
            console = webdriver(base, "POST", s + "/se/log", {"type": "browser"})
        except Exception:  # not every chromedriver keeps the console log
            console = []
        with open(os.path.join(out, shot.replace(".png", "-console.log")), "w") as f:
            for entry in console or []:
                f.write(f"{entry.get('level')} {entry.get('message')}\n")
        webdriver(base, "DELETE", s)
    finally:
        drv.terminate()
        server.shutdown()
    return result, took


def main():
    args = sys.argv[1:]
    onnx = None
    if "--onnx" in args:
        i = args.index("--onnx")
        onnx, args = args[i + 1:i + 4], args[:i]
    www, out = args
    os.makedirs(out, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        sys.exit("browser test: chromium and chromedriver are needed (apt-get install chromium chromium-driver)")

    query = "autotest=1"
    if onnx:
        # The ONNX files are served from beside the page, by link.
        served = os.path.join(www, "onnx-test")
        shutil.rmtree(served, ignore_errors=True)
        os.makedirs(served)
        names = []
        for role, path in zip(["onnx", "onnx_in", "onnx_out"], onnx):
            name = f"{role}-{os.path.basename(path)}"
            shutil.copyfile(path, os.path.join(served, name))
            names.append(f"{role}=onnx-test/{name}")
        query += "&" + "&".join(names)

    result, took = run_page(www, out, query, True, "kiln-web.png")
    # The same page where the browser offers no WebGPU adapter (Chromium without its WebGPU
    # switch): kiln must fall back to its CPU backend, say so, and still train and pass the
    # op table (all of it: the CPU backend reads back without blocking).
    fallback, fallback_took = run_page(www, out, "autotest=1&epochs=10", False, "kiln-web-no-webgpu.png")

    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"browser test: page finished in {took:.0f} s; screenshot {out}/kiln-web.png")
    failures = []
    if result is None:
        sys.exit(f"browser test: FAILED: the page gave no result within {TIMEOUT_S} s")
    if result.get("error"):
        failures.append(f"the page failed: {result['error']}")
    dev = result.get("device") or {}
    print(f"browser test: device {dev.get('name')!r} kind {dev.get('kind')} backend {dev.get('backend')} "
          f"largest binding {dev.get('max_storage_buffer_binding_size')} bytes; note: {dev.get('note') or '-'}")
    if dev.get("backend") != "webgpu":
        failures.append(f"the page did not compute on WebGPU (backend {dev.get('backend')!r})")
    ops = result.get("ops")
    if ops:
        print(f"browser test: op table: {ops['passed']} of {ops['ops']} ops passed "
              f"({ops['samples']} samples, {ops['half_samples']} in f16/bf16, {ops['error_cases']} error cases; "
              f"largest |webgpu - cpu| / max(1, |cpu|) {ops['max_vs_cpu']:.2e}); "
              f"{ops['needs_blocking_read']} need a blocking read-back; {ops['failed']} failed")
        for r in ops["results"]:
            if not r["passed"]:
                kind = "needs a blocking read-back" if r["needs_blocking_read"] else "FAILED"
                print(f"  {r['name']}: {kind}: {r['failure']}")
                failures.append(f"op {r['name']}: {r['failure']}")
    else:
        failures.append("the op table did not run")
    digits = result.get("digits")
    if digits:
        print(f"browser test: digits: {100 * digits['accuracy']:.2f}% held-out after {digits['epochs']} "
              f"epochs in {digits['seconds']:.1f} s (loss {digits['losses_first']:.3f} -> {digits['losses_last']:.3f})")
        if digits["accuracy"] < 0.95:
            failures.append(f"digits reached only {100 * digits['accuracy']:.2f}%")
    else:
        failures.append("digits did not train")
    if onnx:
        report = result.get("onnx") or []
        for r in report:
            tol = 1e-4 + 1e-3 * r["max_abs"]
            ok = r["max_diff"] is not None and r["max_diff"] <= tol
            print(f"browser test: onnx {os.path.basename(onnx[0])} output {r['name']}: max |kiln - onnxruntime| "
                  f"{r['max_diff']:.2e} (tolerance {tol:.2e}) {'ok' if ok else 'FAILED'}")
            if not ok:
                failures.append(f"onnx output {r['name']} differs by {r['max_diff']}")
        if not report:
            failures.append("the ONNX model did not run")
        cls = result.get("classify") or {}
        probs = [p for _, p in cls.get("top", [])]
        print(f"browser test: the classifier panel on a drawn image: output {cls.get('output')} "
              f"{cls.get('shape')}, top classes {cls.get('top')}")
        if not probs or abs(sum(p for p in probs)) > 1.0 + 1e-6 or any(p < 0 for p in probs):
            failures.append(f"the classifier panel gave no sensible classes: {cls}")
    with open(os.path.join(out, "result-no-webgpu.json"), "w") as f:
        json.dump(fallback, f, indent=1)
    if fallback is None:
        failures.append(f"without WebGPU the page gave no result within {TIMEOUT_S} s")
    else:
        dev = fallback.get("device") or {}
        ops, digits = fallback.get("ops") or {}, fallback.get("digits") or {}
        print(f"browser test: without WebGPU ({fallback_took:.0f} s): device {dev.get('name')!r} "
              f"kind {dev.get('kind')}; note: {dev.get('note') or '-'}; op table {ops.get('passed')} "
              f"of {ops.get('ops')} passed; digits {100 * digits.get('accuracy', 0):.2f}% after "
              f"{digits.get('epochs')} epochs in {digits.get('seconds', 0):.1f} s")
        if fallback.get("error"):
            failures.append(f"without WebGPU the page failed: {fallback['error']}")
        if dev.get("kind") != "Cpu" or "WebGPU is not available" not in (dev.get("note") or ""):
            failures.append(f"without WebGPU the page did not fall back to the CPU with a note: {dev}")
        if not ops or ops.get("passed") != ops.get("ops"):
            bad = [r["name"] for r in ops.get("results", []) if not r["passed"]]
            failures.append(f"without WebGPU, ops failed on the CPU backend: {bad}")
        if digits.get("accuracy", 0) < 0.9:
            failures.append(f"without WebGPU, digits reached only {digits.get('accuracy')} in 10 epochs")
    if failures:
        print("browser test: FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("browser test: passed")


if __name__ == "__main__":
    main()
