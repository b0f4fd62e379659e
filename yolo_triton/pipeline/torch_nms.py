"""Exact greedy NMS on the GPU in fixed-size buffers: no host synchronisation, capturable in a CUDA graph.

`torch_decode.decode_batch` is exact but dynamic: `nonzero` sizes the candidates, torchvision's
NMS kernel sorts and scans them, and each of those waits for the GPU (three host
synchronisations an execute, 1 ms of a crowded scene's 1.5 ms on an H200). Here every shape is
fixed by the batch size and `k`, the candidates an image may have, and the work is four Triton
kernels (`nms_kernels`): the candidates above each image's CONF_THRESHOLD in Ultralytics' order,
IoU bits decided exactly as `nms._iou_above` decides them, a greedy scan on the GPU, and one
packed table per image (count, exact flag, kept rows in original-image pixels).

An image with more than `k` candidates is flagged (not exact): the caller answers it from
`torch_decode` instead, so nothing is ever truncated or approximated. Measured on the shipped
samples at 640 with the crowded checkpoint: 179 candidates on bus.jpg, 2329 on a small image
upscaled. MULTI_LABEL (every (anchor, class) pair above the threshold: anchors x classes
candidates) always goes to `torch_decode`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from yolo_triton.pipeline import nms_kernels, torch_decode
from yolo_triton.pipeline.nms import Detections
from yolo_triton.pipeline.nms_kernels import HEADER, OPTIONS, ROW  # noqa: F401 - the table's layout, re-exported
from yolo_triton.pipeline.protocol import Limits

CANDIDATES = 1024  # k: candidates per image on the fixed path (more: answered by torch_decode)


def fixed_nms(
    raw: torch.Tensor, best: tuple[torch.Tensor, torch.Tensor] | None, options: torch.Tensor, k: int = CANDIDATES,
) -> torch.Tensor:
    """Decode + NMS + map back for a (b, 4 + nc, anchors) float32 batch, shapes fixed by (b, k).

    `best` is `torch_decode.best_class(raw)` when the caller has it; `options` (b, OPTIONS) float32
    on raw's device holds each image's CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS and LETTERBOX
    row (`options_row`). Returns the packed table of `nms_kernels.nms_table`: per image its
    count, exact flag and kept rows in original pixels.
    """
    scores, classes = best if best is not None else torch_decode.best_class(raw)
    return nms_kernels.nms_table(raw, scores, classes, options, k)


def graphed_or_none(tails: dict, device: torch.device) -> tuple[GraphedNms | None, str]:
    """`GraphedNms` for these network graphs, checked (`GraphedNms.check`), and a line saying so;
    (None, why) when its kernels fail to compile or capture (no Triton, a driver it does not
    support) or disagree with `nms.decode`: the caller then answers with `torch_decode`, which is
    exact too, only slower, and keeps serving."""
    try:
        graphed = GraphedNms(tails, device)
        graphed.check(tails)
        return graphed, "NMS: Triton kernels replayed from CUDA graphs, checked against nms.decode"
    except Exception as e:  # noqa: BLE001 - any failure leaves the dynamic NMS, which is correct
        return None, f"NMS: dynamic (torch_decode): the NMS kernels failed ({type(e).__name__}: {str(e)[:200]})"


def check_against_numpy(answer: Callable[[torch.Tensor, np.ndarray, Limits], list[Detections]],
                        raw_shape: tuple[int, int, int], device: torch.device) -> None:
    """Raise RuntimeError unless `answer(raw, letterbox_rows, limits)` gives `nms.decode`'s boxes (the
    NumPy definition, mapped back by `geometry.unletterbox`) bit for bit on a crowded synthetic
    output: a few hundred candidates an image, tied scores, per-image thresholds, MAX_DETECTIONS
    cutting. What a model runs at load, so that kernels miscompiled for its GPU never answer."""
    from yolo_triton.pipeline.geometry import plan
    from yolo_triton.pipeline.postprocess import postprocess_one

    b, rows, anchors = raw_shape
    gen = np.random.default_rng(0)
    raw = np.zeros((b, rows, anchors), np.float32)
    centres = gen.uniform(0, 640, (b, 40, 2)).astype(np.float32)
    pick = gen.integers(0, 40, (b, anchors))
    for i in range(b):
        raw[i, :2] = centres[i, pick[i]].T + gen.normal(0, 8, (2, anchors)).astype(np.float32)
        raw[i, 2:4] = gen.uniform(10, 160, (2, anchors))
        raw[i, 4:] = 0.2 * gen.random((rows - 4, anchors), np.float32) ** 4
        hot = np.flatnonzero(gen.random(anchors) < min(1.0, 250 / anchors))
        raw[i, 4 + gen.integers(0, rows - 4, hot.size), hot] = np.round(gen.uniform(0.2, 1, hot.size) * 16) / 16
    letterbox_rows = np.stack([plan(1080, 810, 640).as_array()] * b)
    limits = [(0.25, 0.7, 300), (0.3, 0.5, 20)][:b] + [(0.25, 0.7, 300)] * max(0, b - 2)
    got = answer(torch.from_numpy(raw).to(device), letterbox_rows, limits)
    for i, (g, lim) in enumerate(zip(got, limits)):
        want = postprocess_one(raw[i], letterbox_rows[i], *lim)
        same = all(np.array_equal(x, y) for x, y in zip(g, want))
        if not same or len(want.scores) == 0:
            raise RuntimeError(f"the NMS kernels disagree with nms.decode on image {i} of a check batch "
                               f"({len(g.scores)} boxes against {len(want.scores)})")


def options_row(limits: tuple[float, float, int], letterbox_row: np.ndarray) -> list[float]:
    """One image's row of the options (max_det is exact in float32 up to 2^24)."""
    return [*limits, *letterbox_row]


def unpack(table: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows (n, width, ROW), counts, exact) from a host copy of a table's first HEADER + width * ROW columns."""
    n = len(table)
    return table[:, HEADER:].reshape(n, width, ROW), table[:, 0].astype(np.int64), table[:, 1] > 0.5


def to_detections(rows: np.ndarray, counts: np.ndarray) -> list[Detections]:
    """Per-image `Detections` from host copies of the kept rows (any width >= the counts) and counts."""
    return [
        Detections(r[:c, :4].copy(), r[:c, 4].copy(), r[:c, 5].astype(np.int32))
        for r, c in zip(rows, counts.tolist())
    ]


def postprocess_batch(
    raw: torch.Tensor, letterbox_rows: np.ndarray, limits: Sequence[tuple[float, float, int]],
    multi_label: Sequence[bool] | None = None, best: tuple[torch.Tensor, torch.Tensor] | None = None,
    k: int = CANDIDATES,
) -> list[Detections]:
    """`torch_decode.postprocess_batch` through `fixed_nms`: one copy to the host (the kept rows),
    and the images it flags answered by `torch_decode` (the same boxes, dynamically); a batch with
    MULTI_LABEL images goes to `torch_decode` whole."""
    if multi_label is not None and any(multi_label):
        return torch_decode.postprocess_batch(raw, letterbox_rows, list(limits), multi_label, best)
    options = np.array([options_row(lim, row) for lim, row in zip(limits, letterbox_rows)], np.float32)
    table = fixed_nms(raw, best, torch.from_numpy(options).to(raw.device), k)
    width = int(min((table.shape[1] - HEADER) // ROW, max(int(options[:, 2].max(initial=0)), 1)))
    rows, counts, exact = unpack(table[:, : HEADER + width * ROW].cpu().numpy(), width)
    out = to_detections(rows, counts)
    return redo_inexact(out, exact, raw, letterbox_rows, limits, best)


def redo_inexact(
    out: list[Detections], exact: np.ndarray, raw: torch.Tensor, letterbox_rows: np.ndarray,
    limits: Sequence[tuple[float, float, int]], best: tuple[torch.Tensor, torch.Tensor] | None,
) -> list[Detections]:
    """Replace the images `fixed_nms` flagged (single-label, more than k candidates) with
    `torch_decode`'s answer for them."""
    redo = np.flatnonzero(~exact)
    if redo.size == 0:
        return out
    index = torch.from_numpy(redo).to(raw.device)
    again = torch_decode.postprocess_batch(
        raw[index], letterbox_rows[redo], [limits[i] for i in redo], None,
        None if best is None else (best[0][index], best[1][index]),
    )
    for i, d in zip(redo.tolist(), again):
        out[i] = d
    return out


class GraphedNms:
    """`fixed_nms` replayed from one CUDA graph per batch bucket, on the network graphs' outputs.

    The network graph of each bucket leaves its output and best classes in static buffers
    (`GraphedNetwork.static_tail`); these graphs read them there, so between the network and the
    answers the host only writes the images' options into a pinned buffer, queues one copy in,
    one replay and one copy out of the kept rows, then waits once. The kernels work only over
    the candidates an image has, so one `k` serves sparse and crowded scenes alike.
    """

    def __init__(self, tails: dict, device: torch.device, k: int = CANDIDATES) -> None:
        self.buckets = tuple(sorted(tails))
        top = self.buckets[-1]
        self.device = device
        self.options_host = torch.zeros((top, OPTIONS), dtype=torch.float32, pin_memory=True)
        self.options = torch.zeros((top, OPTIONS), dtype=torch.float32, device=device)
        self.options[:, 0] = 1.0  # no candidates in rows nobody wrote
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.tables: dict[int, torch.Tensor] = {}  # fixed_nms(...) of each bucket, written by its graph
        self.k = min(k, tails[top].raw.shape[2])

        def run(b: int) -> torch.Tensor:
            tail = tails[b]
            return fixed_nms(tail.raw, (tail.scores, tail.classes), self.options[:b], self.k)

        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for b in reversed(self.buckets):  # largest first: the pool is sized once
                run(b)  # compiles the kernels for this shape before the capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side):
                    self.tables[b] = run(b)
                self.graphs[b] = graph
        torch.cuda.current_stream(device).wait_stream(side)
        self.table_host = torch.zeros(top * (HEADER + self.k * ROW), dtype=torch.float32, pin_memory=True)
        self.done = torch.cuda.Event()
        torch.cuda.synchronize(device)

    def check(self, tails: dict) -> None:
        """`check_against_numpy` through a replay of the smallest bucket of two images or more,
        its network buffers filled with the check's output (the next network replay overwrites them)."""
        b = next((x for x in self.buckets if x >= 2), self.buckets[-1])
        tail = tails[b]

        def answer(raw: torch.Tensor, rows: np.ndarray, limits: Limits) -> list[Detections]:
            scores, classes = torch_decode.best_class(raw)
            for buffer, value in ((tail.raw, raw), (tail.scores, scores), (tail.classes, classes)):
                buffer[: len(raw)].copy_(value)
            got, counts, exact = self(np.array([options_row(lim, row) for lim, row in zip(limits, rows)], np.float32))
            if not exact.all():
                raise RuntimeError("the check batch has more candidates than the graphs hold")
            return to_detections(got, counts)

        with torch.inference_mode():
            check_against_numpy(answer, (min(b, 2), *tail.raw.shape[1:]), self.device)

    def __call__(self, options: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, counts, exact) for the first len(options) images of the last network replay.

        `options` is (n, OPTIONS) float32 (`options_row`); rows are (n, width, ROW) with width the
        largest MAX_DETECTIONS asked for (at most k): only those come to the host, with each
        image's count and flag in front of its rows, in one copy (a copy is a launch and tens of
        microseconds of Python at concurrency 1).
        """
        n = len(options)
        b = next(x for x in self.buckets if x >= n)
        stream = torch.cuda.current_stream(self.device)  # named once: a bare record() looks it up slowly
        host = self.options_host.numpy()
        host[:n] = options
        host[n:b] = 0.0
        host[n:b, 0] = 1.0  # the bucket's padding images: no candidates, no work
        self.options[:b].copy_(self.options_host[:b], non_blocking=True)
        self.graphs[b].replay()
        width = min(self.k, max(1, int(options[:, 2].max())))
        got = self.table_host[: n * (HEADER + width * ROW)].view(n, HEADER + width * ROW)
        got.copy_(self.tables[b][:n, : HEADER + width * ROW], non_blocking=True)
        self.done.record(stream)
        self.done.synchronize()  # the one wait between the network and the answers
        return unpack(got.numpy(), width)
