"""The letterbox in PyTorch, on the GPU: `letterbox_batch` ~ `geometry.letterbox` + `geometry.to_pixels`.

The plan itself comes from `geometry.plan`, the NumPy definition; tests/test_gpu.py checks this
against it on CPU tensors, so CI guards it without a GPU. A repeated frame size replays from a
CUDA graph of its own (`LetterboxGraphs`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from yolo_triton.pipeline import geometry


def letterbox_batch(images: torch.Tensor, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Same-size BGR uint8 NHWC images -> letterboxed RGB float32 NCHW in [0, 1].

    Equals `to_pixels(letterbox(img))` for each image up to bilinear rounding (OpenCV's uint8
    resize uses fixed-point weights; here the float result is rounded to the nearest level, so a
    pixel differs by at most one level). Work happens on `images.device`, in one pass per step
    for the whole batch.
    """
    n, h, w, _ = images.shape
    lb = geometry.plan(h, w, size)
    canvas = out if out is not None else torch.empty((n, 3, size, size), dtype=torch.float32, device=images.device)
    canvas.fill_(float(geometry.PAD_VALUE))
    region = canvas[:, :, lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    x = images.permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels-last strides): no copy
    if (lb.new_h, lb.new_w) != (h, w):
        x = torch.nn.functional.interpolate(
            x.float(), size=(lb.new_h, lb.new_w), mode="bilinear", align_corners=False, antialias=False
        ).round_()
    region.copy_(x.flip(1))  # BGR -> RGB
    # A tensor divisor keeps true division (a Python scalar becomes a multiply by 1/255 on CUDA),
    # so the float32 values are exactly those of to_pixels for the same grey levels.
    return canvas.div_(torch.full((), 255.0, dtype=canvas.dtype, device=canvas.device))


def letterbox_many(batches: Sequence[torch.Tensor], size: int, out: torch.Tensor) -> np.ndarray:
    """Letterbox a list of NHWC batches (one per request) into `out[:total]`, in order.

    Consecutive batches of one image size are resized in one pass (a steady stream of camera
    frames arrives that way); `out` may be any float dtype, e.g. a CUDA graph's FP16 input.
    Returns the LETTERBOX rows, (total, 6) float32, from `geometry.plan`.
    """
    rows, start, i = [], 0, 0
    while i < len(batches):
        j = i + 1
        while j < len(batches) and batches[j].shape[1:3] == batches[i].shape[1:3]:
            j += 1
        images = batches[i] if j == i + 1 else torch.cat(list(batches[i:j]))
        n, h, w = images.shape[:3]
        letterbox_batch(images, size, out=out[start : start + n])
        rows.append(plan_rows(h, w, size, n))
        start, i = start + n, j
    return np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)


def plan_rows(h: int, w: int, size: int, n: int) -> np.ndarray:
    """The LETTERBOX rows of `n` images of one size, (n, 6) float32, from `geometry.plan`."""
    return np.repeat(geometry.plan(h, w, size).as_array()[None], n, axis=0)


class LetterboxGraphs:
    """`letterbox_batch` replayed from a CUDA graph per batch shape (images, height, width).

    Eager, the letterbox is up to eight kernel launches and their Python for a few microseconds of GPU
    work, which at concurrency 1 is time on every request's path. A camera or a client sends the
    same frame size again and again, so a shape seen twice is captured (a one-off shape is not
    worth a capture) and then costs one copy into the graph's input and one replay. Each capture
    is checked against the eager letterbox and refused, for good, on any difference. Graphs share
    one memory pool (replays never overlap and keep nothing alive), the least recently used one
    goes past `max_graphs`, and batches over `max_bytes` of pixels stay eager. The shapes seen once
    are forgotten past `max_seen`, so clients sending ever-new sizes cannot grow the set forever.
    """

    def __init__(
        self, size: int, out: torch.Tensor, max_graphs: int = 8, max_bytes: int = 1 << 24, max_seen: int = 4096
    ) -> None:
        self.size, self.out = size, out
        self.max_graphs, self.max_bytes, self.max_seen = max_graphs, max_bytes, max_seen
        self.graphs: OrderedDict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = OrderedDict()
        self.seen: set[tuple[int, int, int]] = set()
        self.refused: dict[tuple[int, int, int], str] = {}  # shape -> why it stays eager
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, batches: Sequence[torch.Tensor]) -> bool:
        """Letterbox `batches` (NHWC uint8 on out's GPU, one per request) into `out[:total]` from a
        graph when one fits; False when the caller should run `letterbox_many` instead."""
        h, w = batches[0].shape[1:3]
        if any(b.shape[1:3] != (h, w) for b in batches[1:]):
            return False
        key = (sum(b.shape[0] for b in batches), h, w)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(key, batches)
            if entry is None:
                return False
        self.graphs.move_to_end(key)
        graph, static = entry
        _copy_into(static, batches)
        graph.replay()
        return True

    def _capture(
        self, key: tuple[int, int, int], batches: Sequence[torch.Tensor]
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        n, h, w = key
        if key in self.refused or n > self.out.shape[0] or n * h * w * 3 > self.max_bytes:
            return None
        if key not in self.seen:
            if len(self.seen) >= self.max_seen:
                self.seen.clear()
            self.seen.add(key)
            return None
        static = torch.empty((n, h, w, 3), dtype=torch.uint8, device=self.out.device)
        _copy_into(static, batches)
        target = self.out[:n]
        side = torch.cuda.Stream(self.out.device)
        side.wait_stream(torch.cuda.current_stream(self.out.device))
        try:
            with torch.cuda.stream(side):
                letterbox_batch(static, self.size, out=target)  # warm-up on the capturing stream
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=side, capture_error_mode="thread_local"):
                    letterbox_batch(static, self.size, out=target)
            torch.cuda.current_stream(self.out.device).wait_stream(side)
            graph.replay()
            replayed = target.clone()
            letterbox_batch(static, self.size, out=target)
            if not torch.equal(replayed, target):
                raise RuntimeError("the replay differs from the eager letterbox")
        except RuntimeError as e:  # a failed or wrong capture leaves this shape eager, which is correct
            torch.cuda.current_stream(self.out.device).wait_stream(side)
            self.refused[key] = f"{type(e).__name__}: {str(e)[:200]}"
            return None
        self.graphs[key] = (graph, static)
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return graph, static


def _copy_into(static: torch.Tensor, batches: Sequence[torch.Tensor]) -> None:
    """Each request's images into consecutive rows of `static`."""
    if len(batches) == 1:
        static.copy_(batches[0])
        return
    start = 0
    for b in batches:
        static[start : start + b.shape[0]].copy_(b)
        start += b.shape[0]
