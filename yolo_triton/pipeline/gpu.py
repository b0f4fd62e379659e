"""The GPU pipeline in one call: letterbox, FP16 network and NMS, each replayed from CUDA graphs.

This is what the fused model `yolov8n_gpu_fused` runs in a single execute(). The steps are the
staged ensemble's own kernels (`letterbox_kernels`, the compiled network, `nms_kernels`); what
fusing removes is the glue between them: two Triton<->stub hops with their copies and
synchronisations, two ensemble steps, and the FP32 network input, because images are
letterboxed straight into the CUDA graph's FP16 input buffer. At concurrency 1 what is left is
kernel launches and host synchronisations, so each step is one replay from CUDA graphs: the
letterbox over the frames copied into a staging buffer (`torch_letterbox.GraphedLetterbox`), the
network with its cast, best class and finiteness check (`GraphedNetwork`), and decode + exact
NMS + the map back to the image in fixed-size buffers (`torch_nms.GraphedNms`). The host waits
once, for the kept boxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yolo_triton import spec
from yolo_triton.pipeline import torch_decode, torch_letterbox, torch_network, torch_nms
from yolo_triton.pipeline.postprocess import pad_batch
from yolo_triton.pipeline.protocol import Limits

STAGES = ("letterbox", "network", "nms")


@dataclass(frozen=True)
class Started:
    """A batch whose letterbox and network are queued on the GPU (`GpuPipeline.start`)."""

    rows: np.ndarray  # LETTERBOX rows, one per image
    raw: torch.Tensor  # network output, float32; valid once the GPU gets there, until the next start
    sizes: list[int]  # images per request
    t: float  # when the network was queued (per-stage profile)
    best: tuple[torch.Tensor, torch.Tensor] | None = None  # torch_decode.best_class(raw), when computed with it
    finite: Callable[[], bool] | None = None  # whether raw is all finite, once the GPU got there
    started_at: float = 0.0  # perf_counter() when start() was called (per-stage metrics)


class GpuPipeline:
    """Letterbox -> network -> NMS for a batch of requests, on one GPU."""

    def __init__(
        self, artefact: Path, imgsz: int, device: torch.device, buckets: Sequence[int], compile_net: bool = True
    ) -> None:
        net = torch_network.load_served_network(artefact, device, imgsz)
        self.imgsz, self.device = imgsz, device
        self.times: dict[str, float] | None = None  # per-stage seconds, when profiling (benchmarks)
        self.eager_fallbacks = 0
        with torch.inference_mode():
            # Every eager op runs once before any graph is captured: first calls load kernels and
            # create library handles and workspaces, and in one process with captured graphs that
            # lazy set-up coincided with replays returning NaN (H200, torch 2.11).
            frame = torch.zeros((1, *spec.WARMUP_FRAME), dtype=torch.uint8, device=device)
            pixels = torch.empty((2, 3, imgsz, imgsz), dtype=torch.float16, device=device)
            rows = torch_letterbox.letterbox_many([frame, frame], pixels)
            raw = net(pixels).float()
            noisy = torch.rand_like(raw)  # candidates for every NMS path
            torch_decode.postprocess_batch(noisy[:1], rows[:1], [(0.25, 0.7, 300)], [False])
            torch_decode.postprocess_batch(noisy, rows, [(0.0, 0.6, 10), (0.5, 0.7, 20)], [True, False])
            torch_decode.postprocess_batch(raw, rows, [(0.25, 0.7, 300)] * 2, [False, False])
            torch_nms.postprocess_batch(noisy, rows, [(0.0, 0.6, 10), (0.5, 0.7, 20)], [True, False])
        self.eager = net
        fast, self.network_note = torch_network.compile_network(net, imgsz, compile_net)
        self.net = torch_network.GraphedNetwork(fast, imgsz, device, torch.float16, buckets, tail=True)
        self.net.check(net)
        self.max_batch = self.net.buckets[-1]
        self.letterbox, self.letterbox_note = torch_letterbox.graphed_or_none(self.net.static_in, self.net.buckets)
        self.nms, self.nms_note = torch_nms.graphed_or_none(self.net.static_tail, device)  # None: torch_decode
        # The finiteness flag of the last replay comes to this pinned byte without a wait of its own:
        # NMS synchronises anyway, and the event says when the copy has landed.
        self._finite = torch.zeros((), dtype=torch.bool, pin_memory=True)
        self._finite_ready = torch.cuda.Event()
        # Stage boundaries on the GPU's own clock, for the per-stage metrics: recorded in the
        # stream, read once NMS has synchronised, so timing costs no wait (see stage_seconds).
        self._marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        with torch.inference_mode():  # the whole path once more, graphs included
            self([frame], [[(0.25, 0.7, 300)]], [[False]])
            if self.max_batch > 1:
                self([frame, frame], [[(0.0, 0.6, 10)], [(0.5, 0.7, 20)]], [[True], [False]])
        torch.cuda.synchronize(device)

    def _mark(self, stage: str, t0: float) -> float:
        if self.times is None:
            return t0
        torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - t0
        return now

    def start(self, batches: Sequence[torch.Tensor]) -> Started:
        """Queue letterbox and network for a batch of requests and return without waiting for them.

        `batches` are uint8 NHWC images on this GPU, one tensor per request. The caller may do host
        work (read and check the requests' options) while the GPU runs, then call `finish`.
        """
        t0 = time.perf_counter()
        total = sum(b.shape[0] for b in batches)
        if total > self.max_batch:  # the config's max_batch_size is the largest graph: cannot happen
            raise ValueError(f"{total} images in one execute exceed the largest CUDA graph ({self.max_batch})")
        t = time.perf_counter()
        stream = torch.cuda.current_stream(self.device)  # once: each bare record() looked it up, slowly
        self._marks[0].record(stream)
        if self.letterbox is not None:
            rows = self.letterbox(batches)
        else:
            rows = torch_letterbox.letterbox_many(batches, self.net.static_in)
        t = self._mark("letterbox", t)
        self._marks[1].record(stream)
        out = self.net.run_tail(total)  # views into the graph's buffers: one batch in flight at a time
        self._marks[2].record(stream)
        self._finite.copy_(out.finite, non_blocking=True)
        self._finite_ready.record(stream)
        sizes = [b.shape[0] for b in batches]
        return Started(rows, out.raw, sizes, t, (out.scores, out.classes), self._replayed_finite, t0)

    def stage_seconds(self, run: Started) -> dict[str, float]:
        """Seconds per stage (spec.STAGES) of the batch just finished: letterbox and network from
        the GPU's events; postprocess is the rest of the wall time from start() to now, since
        after the network only NMS stands between the batch and its answers."""
        self._marks[2].synchronize()  # done already, unless every request was refused before NMS
        letterbox = self._marks[0].elapsed_time(self._marks[1]) / 1e3
        network = self._marks[1].elapsed_time(self._marks[2]) / 1e3
        wall = time.perf_counter() - run.started_at
        return {"preprocess": letterbox, "network": network, "postprocess": max(0.0, wall - letterbox - network)}

    def _replayed_finite(self) -> bool:
        self._finite_ready.synchronize()
        return bool(self._finite)

    def finish(
        self, run: Started, limits: Sequence[Limits], multi: Sequence[list[bool]], keep: Sequence[int] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """One response's (BOXES, SCORES, CLASSES, NUM_DETECTIONS) per kept request.

        `keep` lists the started requests to answer (default: all), in order; `limits` and `multi`
        hold their per-image options, checked by the caller (validation.request_options).
        """
        if keep is not None and not keep:  # every request refused: nothing to wait for
            return []
        t = self._mark("network", run.t)
        out = self._answers(run.raw, run.best, run, limits, multi, keep)
        # Checked once NMS has synchronised (the flag is there by then): a broken replay never answers.
        if not (run.finite() if run.finite is not None else bool(torch.isfinite(run.raw).all())):
            self.eager_fallbacks += 1
            raw = self.eager(self.net.static_in[: run.raw.shape[0]]).float()
            out = self._answers(raw, None, run, limits, multi, keep)
        self._mark("nms", t)
        return out

    def _answers(
        self, raw: torch.Tensor, best: tuple[torch.Tensor, torch.Tensor] | None, run: Started,
        limits: Sequence[Limits], multi: Sequence[list[bool]], keep: Sequence[int] | None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """NMS for the kept requests: from the bucket's NMS graph on the last replay's output, or,
        with MULTI_LABEL (anchors x classes candidates) or an eager network output, `torch_decode`."""
        sizes = run.sizes
        keep = list(range(len(sizes))) if keep is None else list(keep)
        offsets = np.cumsum([0, *sizes])
        index = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in keep]).astype(np.int64)
        flat_limits = [x for per in limits for x in per]
        flat_multi = [x for per in multi for x in per]
        rows = run.rows[index]
        if self.nms is not None and best is not None and not any(flat_multi):
            # Every started image goes through the graph (a refused request's images get
            # options that leave no candidates); only the kept ones are read back.
            options = np.zeros((len(run.rows), torch_nms.OPTIONS), np.float32)
            options[:, 0] = 1.0
            options[index] = [torch_nms.options_row(lim, row) for lim, row in zip(flat_limits, rows)]
            got, counts, exact = self.nms(options)
            dets = torch_nms.to_detections(got[index], counts[index])
            if not exact[index].all():  # more candidates than the graph holds: exactly, eagerly
                on_device = torch.from_numpy(index).to(raw.device)
                dets = torch_nms.redo_inexact(dets, exact[index], raw[on_device], rows, flat_limits,
                                              (best[0][on_device], best[1][on_device]))
        else:
            on_device = torch.from_numpy(index).to(raw.device)
            picked = None if best is None else (best[0][on_device], best[1][on_device])
            dets = torch_decode.postprocess_batch(raw[on_device], rows, flat_limits, flat_multi, picked)
        out, start = [], 0
        for k in keep:
            out.append(pad_batch(dets[start : start + sizes[k]]))
            start += sizes[k]
        return out

    def __call__(
        self, batches: Sequence[torch.Tensor], limits: Sequence[Limits], multi: Sequence[list[bool]]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """`start` then `finish`: one response's outputs per request."""
        return self.finish(self.start(batches), limits, multi)
