"""The GPU roles: the same adapters as roles.py, over the torch stage objects.

Tensors cross the stub boundary by DLPack (gpu_tensors.py): images already in GPU memory (CUDA
shared memory, or an upstream GPU step) are used in place, host ones uploaded once. On a machine
without a usable GPU, construction raises with the reason: Triton marks the model unavailable
and keeps serving everything else.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import numpy as np
import torch

from yolo_triton import spec
from yolo_triton.backend import gpu_tensors
from yolo_triton.backend.args import ModelArgs
from yolo_triton.backend.images import count, cut, flatten, image_input, regroup
from yolo_triton.backend.metrics import Stopwatch
from yolo_triton.backend.requests import Requests
from yolo_triton.backend.roles import postprocess_inputs, split
from yolo_triton.pipeline import encoded, torch_decode, torch_encoded, torch_letterbox, torch_network, torch_nms
from yolo_triton.pipeline.gpu import GpuPipeline
from yolo_triton.pipeline.postprocess import pad_batch
from yolo_triton.pipeline.validation import check_image_shape


class _GpuRole:
    """What every GPU role shares: its device, made current, and DLPack I/O."""

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        self.device = gpu_tensors.gpu_device(pb_utils, margs.device_id, margs.name)
        self.io = gpu_tensors.TorchIO()
        self.pb = pb_utils

    @staticmethod
    def synchronized(batch: Requests, results: list, outputs: tuple, device: torch.device) -> None:
        """Outputs complete before Triton reads them."""
        torch.cuda.current_stream(device).synchronize()
        batch.answer(results, outputs)


class _ImageRole(_GpuRole):
    """A GPU role that takes images (the staged preprocess, the fused pipeline): IMAGE or IMAGE_BYTES."""

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        super().__init__(margs, pb_utils)
        # JPEG on the GPU unless the config sets "nvjpeg": "0" (torch_encoded.GpuJpeg: nvJPEG's
        # planes finished with libjpeg-turbo's arithmetic). Checked against OpenCV at load, before
        # any CUDA graph of this process is captured; the host decodes where the check fails (the
        # load line says why).
        wanted = margs.params.get("nvjpeg", spec.GPU_JPEG["nvjpeg"]) == "1"  # a repository built before the key
        self.jpeg, jpeg_note = torch_encoded.gpu_jpeg_or_none(self.device, wanted)
        pb_utils.Logger.log_info(f"{margs.name}: {jpeg_note}")

    def images(self, batch: Requests, request: Any) -> list[torch.Tensor]:  # noqa: ANN401
        """One request's images on this GPU as pieces (backend.images): IMAGE, its shape checked
        before it is touched, or IMAGE_BYTES decoded (JPEG on the GPU)."""
        which, t = image_input(self.pb, request)
        if which is spec.IMAGE:
            check_image_shape(t.shape())
            return [gpu_tensors.on_device(t, self.device)]
        # BYTES never leave the host (no DLPack for them): the stub's NumPy object array.
        return torch_encoded.decode_all(encoded.images_of(t.as_numpy()), self.device, self.jpeg)


class Preprocess(_ImageRole):
    """Staged step 1 on the GPU: the letterbox kernel, one launch per request, into FP32 `images`."""

    stages = ("preprocess",)

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        super().__init__(margs, pb_utils)
        self.size = margs.imgsz
        with torch.inference_mode():  # first-call CUDA kernel loading happens here, not in a request
            frame = torch.zeros((1, *spec.WARMUP_FRAME), dtype=torch.uint8, device=self.device)
            torch_letterbox.letterbox_batch(frame, self.size)
        torch.cuda.synchronize(self.device)

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        with torch.inference_mode():
            with watch("preprocess"):
                pieces = batch.each(lambda r: self.images(batch, r))
                if not pieces:
                    return 0
                sizes = [count(p) for p in pieces]
                flat, _ = flatten(pieces)
                pixels = torch.empty((sum(sizes), 3, self.size, self.size), dtype=torch.float32, device=self.device)
                # LETTERBOX leaves by DLPack too, on the GPU like `images`, in one small upload.
                rows = torch.from_numpy(torch_letterbox.letterbox_many(flat, pixels)).to(self.device)
            results = list(zip(split(pixels, sizes), split(rows, sizes)))
            self.synchronized(batch, results, spec.PREPROCESS.outputs, self.device)
        return sum(sizes)


class TorchNetwork(_GpuRole):
    """Staged step 2 on the GPU: the exported network in FP16, compiled by TorchInductor (unless the
    config's `torch_compile` is 0) and replayed from one CUDA graph per batch bucket, so neither
    the first request nor any later one pays for compilation, capture or ~200 kernel launches."""

    stages = ("network",)

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        super().__init__(margs, pb_utils)
        try:
            net = torch_network.load_served_network(margs.existing_artefact(), self.device, margs.imgsz)
        except (FileNotFoundError, ValueError) as e:
            raise pb_utils.TritonModelException(str(e)) from None
        buckets = torch_network.graph_buckets(margs.params.get("cuda_graph_batches", ""), margs.max_batch)
        fast, note = torch_network.compile_network(net, margs.imgsz, margs.enabled("torch_compile"))
        self.net = torch_network.GraphedNetwork(fast, margs.imgsz, self.device, torch.float16, buckets)
        pb_utils.Logger.log_info(f"{margs.name}: {note}")

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        with torch.inference_mode():
            xs = batch.each(lambda r: gpu_tensors.on_device(self.pb.get_input_tensor_by_name(r, spec.PIXELS.name),
                                                            self.device))
            if not xs:
                return 0
            x = xs[0] if len(xs) == 1 else torch.cat(xs)
            largest = self.net.buckets[-1]
            with watch("network"):  # a view into the graph's output is copied out (and cast) before the next replay
                chunks = [self.net(x[i : i + largest]).to(torch.float32, copy=True)
                          for i in range(0, x.shape[0], largest)]
                raw = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
            self.synchronized(batch, [(r,) for r in split(raw, [t.shape[0] for t in xs])], (spec.RAW,), self.device)
        return x.shape[0]


class Postprocess(_GpuRole):
    """Staged step 3 on the GPU: decode and batched NMS for every image of the execute() in one pass,
    with the fused model's fixed-size NMS (`torch_nms`, its Triton kernels run eagerly here): no
    host synchronisation until the one copy of the kept boxes to the host. An image with more
    candidates than it holds is answered by `torch_decode` (dynamic, exact), as MULTI_LABEL is
    when the candidate set is anchors x classes wide.
    """

    stages = ("postprocess",)

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        super().__init__(margs, pb_utils)
        self.fixed = True  # the NMS kernels; False: they failed at load, torch_decode answers everything
        with torch.inference_mode():  # compile the kernels and load torchvision's NMS now, not in a request
            raw = torch.rand((2, 6, 64), device=self.device)
            rows = np.array([[1.0, 1.0, 0.0, 0.0, 64.0, 64.0]] * 2, np.float32)
            for limits, multi in (([(0.0, 0.1, 10), (0.5, 0.6, 20)], [True, False]), ([(0.0, 0.5, 10)], None)):
                torch_decode.postprocess_batch(raw[: len(limits)], rows[: len(limits)], limits, multi)
            try:  # kernels miscompiled for this GPU never answer: checked against nms.decode first
                facts = margs.facts
                torch_nms.check_against_numpy(torch_nms.postprocess_batch,
                                              (2, facts.num_outputs, facts.num_anchors), self.device)
            except Exception as e:  # noqa: BLE001 - the dynamic NMS is exact too, only slower
                self.fixed = False
                pb_utils.Logger.log_warn(f"{margs.name}: NMS: dynamic (torch_decode): the NMS kernels failed "
                                         f"({type(e).__name__}: {str(e)[:200]})")

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        items = batch.each(postprocess_inputs(batch))
        if not items:
            return 0
        with torch.inference_mode(), watch("postprocess"):
            raw = torch.cat([r.to(self.device) for r, *_ in items])
            lb = torch.cat([lb.to(self.device) for _, lb, *_ in items]).cpu().numpy()  # LETTERBOX: 24 bytes an image
            limits = [x for _, _, lim, _ in items for x in lim]
            multi = [x for *_, ml in items for x in ml]
            if any(multi) or not self.fixed:  # MULTI_LABEL: anchors x classes candidates, the dynamic path
                dets = torch_decode.postprocess_batch(raw, lb, limits, multi)
            else:
                dets = torch_nms.postprocess_batch(raw, lb, limits)
        sizes = [r.shape[0] for r, *_ in items]
        batch.answer([pad_batch(d) for d in split(dets, sizes)], spec.ENSEMBLE_OUTPUTS)
        return sum(sizes)


class GpuPipelineRole(_ImageRole):
    """The fused GPU model, run by `pipeline.gpu.GpuPipeline`: images are letterboxed straight into
    the CUDA graph's FP16 input, the network replays, one batched NMS runs for every image; the
    requests' options are read and checked while the GPU runs the network."""

    stages = spec.STAGES

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        super().__init__(margs, pb_utils)
        buckets = torch_network.graph_buckets(margs.params.get("cuda_graph_batches", ""), margs.max_batch)
        try:
            self.pipeline = GpuPipeline(margs.existing_artefact(), margs.imgsz, self.device, buckets,
                                        compile_net=margs.enabled("torch_compile"))
        except (FileNotFoundError, ValueError, RuntimeError) as e:  # no artefact, a wrong one, a failed graph check
            raise pb_utils.TritonModelException(str(e)) from None
        self.io = gpu_tensors.TorchIO(torch.cuda.Stream(self.device))  # options copied beside the network's stream
        self.name = margs.name
        pb_utils.Logger.log_info(f"{margs.name}: {self.pipeline.network_note}; {self.pipeline.letterbox_note}; "
                                 f"{self.pipeline.nms_note}")

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        with torch.inference_mode():
            t0 = time.perf_counter()
            pieces = batch.each(lambda r: self.images(batch, r))
            if not pieces:
                return 0
            decoding = time.perf_counter() - t0  # pixels: a DLPack view; bytes: their decode
            flat, counts = flatten(pieces)
            # The GPU letterboxes and runs the network while the host reads and checks the options
            # (a copy and a synchronisation when they sit in GPU memory): they are only needed for NMS.
            run = self.pipeline.start(flat)
            keep, options = batch.then(pieces, lambda r, p: batch.options(r, count(p)))
            # The pipeline answers pieces: the kept requests' pieces, their options cut to match.
            starts = [sum(counts[:k]) for k in range(len(counts))]
            kept = [starts[k] + j for k in keep for j in range(counts[k])]
            limits = [x for k, (lim, _) in zip(keep, options) for x in cut(lim, pieces[k])]
            multi = [x for k, (_, ml) in zip(keep, options) for x in cut(ml, pieces[k])]
            fallbacks = self.pipeline.eager_fallbacks
            results = regroup(self.pipeline.finish(run, limits, multi, kept), [counts[k] for k in keep])
            watch.seconds["preprocess"] = watch.seconds.get("preprocess", 0.0) + decoding
            for stage, seconds in self.pipeline.stage_seconds(run).items():
                watch.seconds[stage] = watch.seconds.get(stage, 0.0) + seconds
            batch.answer(results, spec.ENSEMBLE_OUTPUTS)
            if self.pipeline.eager_fallbacks > fallbacks:
                self.pb.Logger.log_warn(f"{self.name}: a CUDA graph replay was not finite; answered with the eager "
                                        f"network ({self.pipeline.eager_fallbacks} times so far)")
        return sum(count(pieces[k]) for k in keep)


GPU_ROLES: dict[str, type] = {
    "preprocess": Preprocess, "network": TorchNetwork, "postprocess": Postprocess, "pipeline": GpuPipelineRole,
}
