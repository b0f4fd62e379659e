"""Triton python model `preprocess_gpu`: decoded BGR images -> letterboxed network input, on the GPU.

Same contract as `preprocess` (IMAGE uint8 [B,H,W,3] in; `images` float32 [B,3,S,S] and LETTERBOX
out) but the pixels never touch NumPy: an image arriving in host memory is uploaded once, one
arriving in GPU memory (CUDA shared memory, or an upstream GPU step) is used in place, and the
letterbox runs in torch (`torch_ops.letterbox_many`), one pass for consecutive requests of one
image size. The letterbox geometry is `geometry.plan`, computed on the host from the shape
alone. Both outputs leave as GPU tensors by DLPack.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the project root, for yolo_triton

from yolo_triton import spec  # noqa: E402
from yolo_triton.backend import tensors as pb_io  # noqa: E402
from yolo_triton.backend.args import ModelArgs  # noqa: E402
from yolo_triton.backend.errors import error_response  # noqa: E402
from yolo_triton.pipeline import torch_ops  # noqa: E402
from yolo_triton.pipeline.validation import InputError, check_image_shape  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.device = pb_io.gpu_device(pb_utils, args, "preprocess_gpu")
        self.size = ModelArgs.parse(args).imgsz
        with torch.inference_mode():  # first-call CUDA kernel loading happens here, not in a request
            torch_ops.letterbox_batch(torch.zeros((1, 480, 640, 3), dtype=torch.uint8, device=self.device), self.size)
        torch.cuda.synchronize(self.device)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batches, owners = [], []
        with torch.inference_mode():
            for i, request in enumerate(requests):
                try:
                    t = pb_utils.get_input_tensor_by_name(request, spec.IMAGE.name)
                    check_image_shape(t.shape())
                except InputError as e:
                    responses[i] = error_response(pb_utils, e)
                    continue
                batches.append(pb_io.on_device(t, self.device))
                owners.append(i)
            if batches:
                total = sum(b.shape[0] for b in batches)
                pixels = torch.empty((total, 3, self.size, self.size), dtype=torch.float32, device=self.device)
                # LETTERBOX leaves by DLPack too (never the stub's NumPy path: yolo_triton.pb_io),
                # on the GPU like `images`, in one small upload for the whole batch.
                rows = torch.from_numpy(torch_ops.letterbox_many(batches, self.size, pixels)).to(self.device)
                start = 0
                for i, b in zip(owners, batches):
                    n = b.shape[0]
                    responses[i] = pb_utils.InferenceResponse([
                        pb_utils.Tensor.from_dlpack(spec.PIXELS.name, pixels[start : start + n]),
                        pb_utils.Tensor.from_dlpack(spec.LETTERBOX.name, rows[start : start + n]),
                    ])
                    start += n
            torch.cuda.current_stream(self.device).synchronize()  # outputs complete before Triton reads them
        return responses
