"""Triton python model `pipeline_ort`: the whole CPU pipeline in one execute(), served as `yolov8n_ort_fused`.

The ensemble interface (IMAGE and options in; BOXES, SCORES, CLASSES, NUM_DETECTIONS out), run
by `pipeline_cpu.OrtPipeline`: letterbox, ONNX Runtime and NMS with the same functions as the
`yolov8n_ort` ensemble's three steps, so the boxes are the same; it saves the two extra hops
between Triton and python stubs. It loads `detector_ort`'s ONNX file (no copy of its own).
A bad request, or one whose NMS exceeds the server's budget, gets INVALID_ARG naming the problem;
the rest of its batch is served.
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
from yolo_triton.pipeline.cpu import OrtPipeline  # noqa: E402
from yolo_triton.pipeline.validation import InputError, check_images, request_options  # noqa: E402


def _optional(request, name: str) -> np.ndarray | None:  # noqa: ANN001
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        margs = ModelArgs.parse(args)
        try:
            self.pipeline = OrtPipeline(margs.existing_artefact(), margs.imgsz)
        except FileNotFoundError as e:
            raise pb_utils.TritonModelException(str(e)) from None

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batches, limits, multi, owners = [], [], [], []
        for i, request in enumerate(requests):
            try:
                images = check_images(pb_utils.get_input_tensor_by_name(request, spec.IMAGE.name).as_numpy())
                lim, flags = request_options(lambda name, r=request: _optional(r, name), images.shape[0])
            except InputError as e:
                responses[i] = error_response(pb_utils, e)
                continue
            batches.append(images)
            limits.append(lim)
            multi.append(flags)
            owners.append(i)
        if batches:
            for i, out in zip(owners, self.pipeline(batches, limits, multi)):
                if isinstance(out, InputError):  # NMS over the server's budget: this request only
                    responses[i] = error_response(pb_utils, out)
                    continue
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(t.name, a) for t, a in zip(spec.ENSEMBLE_OUTPUTS, out)]
                )
        return responses
