"""Triton python model `detector_torch`: the YOLOv8 network in FP16 on the GPU, replayed from CUDA graphs.

TensorRT is not available everywhere the project deploys, so the GPU detector is PyTorch: the
exported network from `make build-engines` (yolo_triton.gpu_export), cast to FP16, compiled by
TorchInductor (unless the config's `torch_compile` is 0), with one CUDA graph captured per
batch-size bucket at load (`torch_ops.GraphedNetwork`), so neither the first request nor any later
one pays for compilation, graph capture, cudnn's algorithm search or ~200 kernel launches.
All requests of one execute() call form one batch (padded up to its bucket).

Input `images` arrives as a GPU tensor from preprocess_gpu (FORCE_CPU_ONLY_INPUT_TENSORS=no) and
`output0` leaves as one, by DLPack, in float32 as the ensemble interface declares.

On a machine without a usable GPU, initialize() raises with the reason: Triton marks this model
(and the GPU ensemble) unavailable and keeps serving everything else.
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
from yolo_triton.backend.args import ModelArgs  # noqa: E402
from yolo_triton.pipeline import torch_ops  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.device = pb_io.gpu_device(pb_utils, args, "detector_torch")
        margs = ModelArgs.parse(args)
        try:
            net = torch_ops.load_served_network(margs.existing_artefact(), self.device, margs.imgsz)
        except (FileNotFoundError, ValueError) as e:
            raise pb_utils.TritonModelException(str(e)) from None
        buckets = torch_ops.graph_buckets(margs.params.get("cuda_graph_batches", ""), margs.max_batch)
        fast, note = torch_ops.compile_network(net, margs.imgsz, margs.enabled("torch_compile"))
        self.net = torch_ops.GraphedNetwork(fast, margs.imgsz, self.device, torch.float16, buckets)
        pb_utils.Logger.log_info(f"detector_torch: {note}")

    def execute(self, requests: list) -> list:
        with torch.inference_mode():
            xs = [from_dlpack(pb_utils.get_input_tensor_by_name(r, spec.PIXELS.name).to_dlpack()) for r in requests]
            xs = [x if x.is_cuda else x.to(self.device) for x in xs]
            sizes = [x.shape[0] for x in xs]
            batch = xs[0] if len(xs) == 1 else torch.cat(xs)
            largest = self.net.buckets[-1]
            raw = torch.cat([  # a view into the graph's output is copied out (and cast) before the next replay
                self.net(batch[i : i + largest]).to(torch.float32, copy=True)
                for i in range(0, batch.shape[0], largest)
            ]) if batch.shape[0] > largest else self.net(batch).to(torch.float32, copy=True)
            responses, start = [], 0
            for n in sizes:
                out = pb_utils.Tensor.from_dlpack(spec.RAW.name, raw[start : start + n])
                responses.append(pb_utils.InferenceResponse([out]))
                start += n
            torch.cuda.current_stream(self.device).synchronize()  # output written before Triton copies it
        return responses
