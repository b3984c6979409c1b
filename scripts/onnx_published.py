#!/usr/bin/env python3
"""Fetches published, trained ONNX models and writes what onnxruntime computes on them, for
tests/onnx.rs (kiln-onnx) to check kiln against on every device:

  ocr_det.onnx  PaddleOCR PP-OCRv4 text detection (a DB network)      input [1, 3, 96, 96]
  ocr_rec.onnx  PaddleOCR PP-OCRv4 text recognition (SVTR, 6,625-way softmax per column;
                the model that came out wrong on lavapipe before e24095a)  input [1, 3, 48, 160]
  ocr_cls.onnx  PaddleOCR text direction classifier (mobile v2.0)      input [1, 3, 48, 192]

They ship inside the PyPI wheel rapidocr-onnxruntime 1.4.4, fetched with `pip download
--no-deps` (no package is installed) and checked against its SHA-256 before use. Beside each
model: a seeded input (`<name>.input.pb`) and onnxruntime's output for it (`<name>.output.pb`).

usage: scripts/onnx_published.py OUT_DIR    (needs onnx, numpy and onnxruntime:
                                             scripts/requirements.txt)
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
MODELS = {
    "ocr_det": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", (1, 3, 96, 96)),
    "ocr_rec": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 160)),
    "ocr_cls": ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
}


def main(out):
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-cache-dir",
             "rapidocr-onnxruntime==1.4.4", "-d", tmp],
            check=True,
        )
        path = os.path.join(tmp, WHEEL)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest != SHA256:
            sys.exit(f"{WHEEL}: SHA-256 {digest}, expected {SHA256}")
        wheel = zipfile.ZipFile(path)
        rng = np.random.default_rng(0)
        for name, (member, shape) in MODELS.items():
            model = onnx.load_from_string(wheel.read(member))
            onnx.save(model, os.path.join(out, f"{name}.onnx"))
            x = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
            feed = model.graph.input[0].name
            session = ort.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            y = session.run(None, {feed: x})[0]
            with open(os.path.join(out, f"{name}.input.pb"), "wb") as f:
                f.write(numpy_helper.from_array(x, feed).SerializeToString())
            with open(os.path.join(out, f"{name}.output.pb"), "wb") as f:
                f.write(numpy_helper.from_array(y, "output").SerializeToString())


if __name__ == "__main__":
    main(sys.argv[1])
