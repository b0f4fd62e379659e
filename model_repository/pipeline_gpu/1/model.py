"""Triton python model `pipeline_gpu`: the whole GPU pipeline in one execute(), served as `yolov8n_gpu_fused`.

The ensemble interface, run by `pipeline_gpu.GpuPipeline`: images (in GPU memory when the client
uses CUDA shared memory, uploaded once otherwise) are letterboxed straight into the CUDA graph's
FP16 input, the network replays, and one batched NMS runs for every image of the batch; only the
kept boxes come to the host. The requests' options are read and checked while the GPU runs the
network. Same functions as the `yolov8n_gpu` ensemble's three steps, one Triton<->stub hop
instead of three. Loads `detector_torch`'s exported network (compiled by TorchInductor unless the
config's `torch_compile` is 0).

Without a usable GPU, initialize() raises with the reason: Triton marks this model unavailable
and keeps serving everything else.
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
from yolo_triton.pipeline.gpu import GpuPipeline  # noqa: E402
from yolo_triton.pipeline.validation import InputError, check_image_shape, request_options  # noqa: E402

OPTIONS = [t.name for t in spec.ENSEMBLE_INPUTS if t.optional]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.device = pb_io.gpu_device(pb_utils, args, "pipeline_gpu")
        margs = ModelArgs.parse(args)
        buckets = torch_ops.graph_buckets(margs.params.get("cuda_graph_batches", ""), margs.max_batch)
        try:
            self.pipeline = GpuPipeline(margs.existing_artefact(), margs.imgsz, self.device, buckets,
                                        compile_net=margs.enabled("torch_compile"))
        except (FileNotFoundError, ValueError, RuntimeError) as e:  # no artefact, a wrong one, a failed graph check
            raise pb_utils.TritonModelException(str(e)) from None
        self.option_stream = torch.cuda.Stream(self.device)  # see execute()
        self.refusals = 0  # letterbox shapes whose CUDA graph was refused, logged so far
        pb_utils.Logger.log_info(f"pipeline_gpu: {self.pipeline.network_note}")

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
            if not batches:
                return responses
            # The GPU letterboxes and runs the network while the host reads and checks the options
            # (a copy and a synchronisation when they sit in GPU memory): they are only needed for NMS.
            run = self.pipeline.start(batches)
            if len(self.pipeline.letterbox.refused) > self.refusals:
                self._log_refusals()
            keep, limits, multi = [], [], []
            for k, i in enumerate(owners):
                try:
                    options = pb_io.optionals(pb_utils, requests[i], OPTIONS, self.option_stream)
                    lim, flags = request_options(options.__getitem__, batches[k].shape[0])
                except InputError as e:
                    responses[i] = error_response(pb_utils, e)
                    continue
                keep.append(k)
                limits.append(lim)
                multi.append(flags)
            fallbacks = self.pipeline.eager_fallbacks
            for k, out in zip(keep, self.pipeline.finish(run, limits, multi, keep)):
                responses[owners[k]] = pb_utils.InferenceResponse(
                    [pb_io.output(pb_utils, t.name, a) for t, a in zip(spec.ENSEMBLE_OUTPUTS, out)]
                )
            if self.pipeline.eager_fallbacks > fallbacks:
                pb_utils.Logger.log_warn("pipeline_gpu: a CUDA graph replay was not finite; answered with the "
                                         f"eager network ({self.pipeline.eager_fallbacks} times so far)")
        return responses

    def _log_refusals(self) -> None:
        refused = list(self.pipeline.letterbox.refused.items())
        for (n, h, w), why in refused[self.refusals :]:
            pb_utils.Logger.log_warn(f"pipeline_gpu: {n} image(s) of {w}x{h} stay on the eager letterbox: {why}")
        self.refusals = len(refused)
