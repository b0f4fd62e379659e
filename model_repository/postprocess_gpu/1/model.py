"""Triton python model `postprocess_gpu`: raw detector output -> boxes in original-image pixels.

Same contract and semantics as `postprocess` (best class per anchor, strict confidence filter,
per-class NMS, max_det, unletterbox, clip; per-request thresholds), but the heavy part runs on
the GPU for every image the dynamic batcher grouped, in one pass: `torch_ops.decode_batch` reads
`output0` where the detector left it (a GPU tensor, by DLPack) and runs one batched NMS. Only the
surviving boxes come back to the host, in one copy, where `geometry.unletterbox` maps them to the
image and `postprocess.pad_batch` shapes the response, exactly as the CPU path does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the project root, for yolo_triton

from yolo_triton import spec  # noqa: E402
from yolo_triton.backend import tensors as pb_io  # noqa: E402
from yolo_triton.backend.errors import error_response  # noqa: E402
from yolo_triton.pipeline import torch_ops  # noqa: E402
from yolo_triton.pipeline.postprocess import pad_batch  # noqa: E402
from yolo_triton.pipeline.validation import InputError, request_options  # noqa: E402

OPTIONS = [t.name for t in spec.ENSEMBLE_INPUTS if t.optional]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.device = pb_io.gpu_device(pb_utils, args, "postprocess_gpu")
        with torch.inference_mode():  # load torchvision's NMS kernel now, not in the first request
            raw = torch.rand((2, 6, 64), device=self.device)
            for conf, iou, max_det in (((0.0, 0.1), (0.5, 0.6), (10, 20)), ((0.0,), (0.5,), (10,))):
                torch_ops.decode_batch(raw[: len(conf)], conf, iou, max_det).to_numpy(len(conf))

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        raws, lbs, limits, multi, owners = [], [], [], [], []
        for i, request in enumerate(requests):
            try:
                raw_t = pb_utils.get_input_tensor_by_name(request, spec.RAW.name)
                n = raw_t.shape()[0]
                lim, flags = request_options(pb_io.optionals(pb_utils, request, OPTIONS).__getitem__, n)
            except InputError as e:
                responses[i] = error_response(pb_utils, e)
                continue
            raws.append(pb_io.on_device(raw_t, self.device))
            lbs.append(from_dlpack(pb_utils.get_input_tensor_by_name(request, spec.LETTERBOX.name).to_dlpack()))
            limits += lim
            multi += flags
            owners.append((i, n))
        if raws:
            with torch.inference_mode():
                raw = raws[0] if len(raws) == 1 else torch.cat(raws)
                lb = lbs[0] if len(lbs) == 1 else torch.cat([t.to(self.device) for t in lbs])
                dets = torch_ops.postprocess_batch(raw, lb.cpu().numpy(), limits, multi)  # LETTERBOX: 24 bytes an image
            start = 0
            for i, n in owners:
                out = pad_batch(dets[start : start + n])
                responses[i] = pb_utils.InferenceResponse(
                    [pb_io.output(pb_utils, t.name, a) for t, a in zip(spec.ENSEMBLE_OUTPUTS, out)]
                )
                start += n
        return responses
