"""Triton python model `preprocess`: decoded BGR images of any size -> letterboxed network input.

Requests arrive together when the dynamic batcher groups them (IMAGE allows ragged batches, so
sizes may differ); each request may itself carry several images of one size. Every image is
written straight into one preallocated batch buffer, then converted to float in one pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the project root, for yolo_triton

from yolo_triton import spec  # noqa: E402
from yolo_triton.backend.args import ModelArgs  # noqa: E402
from yolo_triton.backend.errors import error_response  # noqa: E402
from yolo_triton.pipeline import geometry  # noqa: E402
from yolo_triton.pipeline.validation import InputError, check_images  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.size = ModelArgs.parse(args).imgsz
        self._canvas = np.empty((spec.MAX_BATCH, self.size, self.size, 3), np.uint8)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                images = check_images(pb_utils.get_input_tensor_by_name(request, spec.IMAGE.name).as_numpy())
                canvases = self._canvas[: images.shape[0]]
                rows = geometry.letterbox_into(images, canvases)
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor(spec.PIXELS.name, geometry.to_pixels(canvases)),
                    pb_utils.Tensor(spec.LETTERBOX.name, rows),
                ]))
            except InputError as e:
                responses.append(error_response(pb_utils, e))
        return responses
