"""Triton python model `detector_ort`: the ONNX detector run by ONNX Runtime inside the server.

The bundled tritonserver has no onnxruntime backend, so this is the CPU default. All requests
of one execute() call are concatenated into a single batch and run once: one ORT call per
batch is where batching pays on the CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the project root, for yolo_triton

from yolo_triton import spec  # noqa: E402
from yolo_triton.backend.args import ModelArgs  # noqa: E402
from yolo_triton.pipeline.ort_session import make_session  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        margs = ModelArgs.parse(args)
        self.session = make_session(margs.artefact)
        self.size = int(margs.config["input"][0]["dims"][-1])
        # Warm up so the first client request does not pay for ORT's lazy initialisation.
        self.session.run([spec.RAW.name], {spec.PIXELS.name: np.zeros((1, 3, self.size, self.size), np.float32)})

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, spec.PIXELS.name).as_numpy() for r in requests]
        batch = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        raw = self.session.run([spec.RAW.name], {spec.PIXELS.name: batch})[0]
        responses, start = [], 0
        for x in inputs:
            n = x.shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(spec.RAW.name, raw[start : start + n])]))
            start += n
        return responses
