#!/usr/bin/env python3
"""Writes ONNX's operator conformance cases (onnx.backend.test.case.node) to a directory, one
folder per case: model.onnx, input_<j>.pb and output_<j>.pb (its first data set), for the cases
whose inputs and outputs are plain tensors. tests/onnx.rs runs them on every kiln device.

usage: scripts/onnx_cases.py OUT_DIR      (needs `pip install onnx`)
"""
import os
import sys

from onnx import TensorProto, numpy_helper
from onnx.backend.test.case import node


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    written = 0
    for case in node.collect_testcases(None):
        graph = case.model.graph
        if not case.data_sets or not all(
            v.type.HasField("tensor_type") for v in list(graph.input) + list(graph.output)
        ):
            continue
        inputs, outputs = case.data_sets[0]
        folder = os.path.join(out, case.name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for kind, values, infos in (("input", inputs, graph.input), ("output", outputs, graph.output)):
            for j, v in enumerate(values):
                t = v if isinstance(v, TensorProto) else numpy_helper.from_array(v, infos[j].name)
                with open(os.path.join(folder, f"{kind}_{j}.pb"), "wb") as f:
                    f.write(t.SerializeToString())
        written += 1
    print(f"{written} ONNX node cases written to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
