"""Triton python model `postprocess`: raw detector output -> boxes in original-image pixels.

Per image: best class per anchor, confidence filter, per-class NMS, map back through the
letterbox, clip. Thresholds are optional per-request inputs (Ultralytics' predict defaults
otherwise). A request with several images gets outputs padded to its largest detection count;
NUM_DETECTIONS says how many rows of each are real.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the project root, for yolo_triton

from yolo_triton import spec  # noqa: E402
from yolo_triton.backend.errors import error_response  # noqa: E402
from yolo_triton.pipeline.postprocess import postprocess_batch  # noqa: E402
from yolo_triton.pipeline.validation import InputError, request_options  # noqa: E402


def _optional(request, name: str) -> np.ndarray | None:  # noqa: ANN001
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, spec.RAW.name).as_numpy()
                lb = pb_utils.get_input_tensor_by_name(request, spec.LETTERBOX.name).as_numpy()
                limits, multi = request_options(lambda name, r=request: _optional(r, name), raw.shape[0])
                out = postprocess_batch(raw, lb, limits, multi)
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(t.name, a) for t, a in zip(spec.ENSEMBLE_OUTPUTS, out)]
                ))
            except InputError as e:
                responses.append(error_response(pb_utils, e))
        return responses
