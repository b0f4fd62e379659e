"""Exact greedy NMS on the GPU in fixed-size buffers: no host synchronisation, capturable in a CUDA graph.

`torch_decode.decode_batch` is exact but dynamic: `nonzero` sizes the candidates, torchvision's
NMS kernel sorts and scans them, and each of those waits for the GPU (three host
synchronisations an execute, 1 ms of a crowded scene's 1.5 ms on an H200). Here every shape is
fixed by the batch size and `k`, the candidates an image may have:

1. candidates: each anchor's best class above the image's CONF_THRESHOLD (or every (anchor,
   class) pair for MULTI_LABEL), ordered by score with a stable sort, so ties keep anchor order
   exactly as `nonzero` + torchvision's stable sort do; the first `k` are kept;
2. the IoU of every pair of those `k`, on Ultralytics' class-offset boxes, with torchvision's
   float32 formula term by term (`nms._iou_above`), compared with each image's IOU_THRESHOLD;
3. greedy suppression as Cluster-NMS fixed-point passes: `keep[j] = not any(keep[i] and IoU(i, j)
   > t for i < j)`, from "all kept". The greedy result is the only fixed point of this rule (it
   decides each box from better-ranked ones only), so once a pass changes nothing the result *is*
   greedy NMS, whatever the chains. Passes are a fixed number (`iterations`); one more is run
   and compared, and an image whose keep vector still moved is flagged;
4. each image's first MAX_DETECTIONS kept boxes, mapped back to the original image
   (`geometry.unletterbox` term by term), written to rows of a fixed output buffer.

An image is flagged (`Fixed.exact` false) when it has more than `k` candidates or its passes did
not settle: the caller answers it from `torch_decode` instead, so nothing is ever truncated or
approximated. Measured on the shipped samples at 640 with the crowded checkpoint: 179 candidates
and 3 passes on bus.jpg, 2329 candidates and 10 passes on a small image upscaled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from yolo_triton.pipeline import torch_decode
from yolo_triton.pipeline.nms import MAX_WH, Detections

CANDIDATES = 1024  # k: candidates per image on the fixed path (more: answered by torch_decode)
ITERATIONS = 4  # suppression passes captured (one more checks them); bus.jpg at 640 settles in 3
ROW = 6  # x1, y1, x2, y2, score, class


@dataclass(frozen=True)
class Fixed:
    """Fixed-size results of a batch: every tensor has the batch's first dimension."""

    rows: torch.Tensor  # (b, k, ROW) float32: the kept boxes in the original image's pixels, best first
    counts: torch.Tensor  # (b,) int64: valid rows per image
    exact: torch.Tensor  # (b,) bool: the rows are greedy NMS (else: too many candidates, or unsettled)


def fixed_nms(
    raw: torch.Tensor,
    best: tuple[torch.Tensor, torch.Tensor] | None,
    conf: torch.Tensor,
    iou: torch.Tensor,
    max_det: torch.Tensor,
    letterbox: torch.Tensor,
    multi_label: torch.Tensor | None = None,
    k: int = CANDIDATES,
    iterations: int = ITERATIONS,
) -> Fixed:
    """Decode + NMS + map back for a (b, 4 + nc, anchors) float32 batch, shapes fixed by (b, k).

    `conf`, `iou` (float32) and `max_det` (int64) are per image, `letterbox` the (b, 6) LETTERBOX
    rows, all on raw's device; `best` is `torch_decode.best_class(raw)` when the caller has it.
    `multi_label` (b,) bool, when given, lets those images keep every (anchor, class) pair above
    the threshold (the candidate set is then anchors x classes wide).
    """
    b, rows, anchors = raw.shape
    nc = rows - 4
    device = raw.device
    scores, classes = best if best is not None else torch_decode.best_class(raw)
    if multi_label is None:
        flat = scores
    else:  # anchor-major pairs, like torch_decode._multi_label_candidates; single-label images: best class only
        s3 = raw[:, 4:, :].transpose(1, 2)
        is_best = torch.zeros_like(s3, dtype=torch.bool).scatter_(2, classes[:, :, None], True)
        flat = s3.masked_fill(~(is_best | multi_label[:, None, None]), float("-inf")).reshape(b, anchors * nc)
    k = min(k, flat.shape[1])
    mask = flat > conf[:, None]  # strict '>', as Ultralytics
    n_cand = mask.sum(1)
    ranked = torch.sort(flat.masked_fill(~mask, float("-inf")), dim=1, descending=True, stable=True)
    top_scores, top = ranked.values[:, :k], ranked.indices[:, :k]
    if multi_label is None:
        anchor, cls = top, classes.gather(1, top)
    else:
        anchor, cls = torch.div(top, nc, rounding_mode="floor"), top.remainder(nc)
    valid = torch.arange(k, device=device)[None, :] < n_cand[:, None]

    xywh = raw[:, :4, :].gather(2, anchor[:, None, :].expand(b, 4, k)).transpose(1, 2).reshape(b * k, 4)
    boxes = torch_decode.xywh2xyxy(xywh).view(b, k, 4)
    shifted = boxes + (cls[:, :, None] * MAX_WH).float()  # float32, like nms.decode
    above = _iou_above(shifted, iou)
    above &= torch.ones((k, k), dtype=torch.bool, device=device).triu(1)  # only better-ranked boxes suppress

    # Passes as a batched matrix product: 0/1 values, sums up to k, exact in FP16 (k <= 2048) or FP32.
    dtype = torch.float16 if device.type == "cuda" and k <= 2048 else torch.float32
    links = above.to(dtype)
    keep = valid.to(dtype)
    previous = keep
    for _ in range(iterations + 1):
        previous = keep
        hit = torch.bmm(keep[:, None, :], links)[:, 0, :]
        keep = (valid & (hit == 0)).to(dtype)
    settled = torch.eq(keep, previous).all(1)
    kept = keep.bool()

    rank = kept.long().cumsum(1) - 1
    chosen = kept & (rank < max_det[:, None])
    mapped = unletterbox(boxes, letterbox)
    packed = torch.cat((mapped, top_scores[:, :, None], cls[:, :, None].float()), 2)
    out = torch.zeros((b, k + 1, ROW), dtype=torch.float32, device=device)  # row k: where the others go
    slot = torch.where(chosen, rank, torch.full_like(rank, k))
    out.scatter_(1, slot[:, :, None].expand(b, k, ROW), packed)
    exact = settled & (n_cand <= k)
    return Fixed(out[:, :k], chosen.sum(1), exact)


def _iou_above(boxes: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """(b, k, k) IoU(i, j) > the image's threshold, term by term `nms._iou_above` (torchvision's
    float32 formula); NaN compares False."""
    x1, y1, x2, y2 = boxes.unbind(2)
    area = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp_(min=0)
    h = (torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp_(min=0)
    inter = w.mul_(h)
    union = (area[:, :, None] + area[:, None, :]).sub_(inter)
    return inter.div_(union) > iou[:, None, None]


def unletterbox(boxes: torch.Tensor, letterbox: torch.Tensor) -> torch.Tensor:
    """`geometry.unletterbox` for (b, n, 4) boxes and (b, 6) LETTERBOX rows, in float32."""
    gain_x, gain_y, pad_x, pad_y, orig_h, orig_w = (c[:, None] for c in letterbox.float().unbind(1))
    x = ((boxes[:, :, 0::2] - pad_x[:, :, None]) / gain_x[:, :, None])
    y = ((boxes[:, :, 1::2] - pad_y[:, :, None]) / gain_y[:, :, None])
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    x = torch.minimum(torch.maximum(x, zero), orig_w[:, :, None])
    y = torch.minimum(torch.maximum(y, zero), orig_h[:, :, None])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), 2)


def to_detections(rows: np.ndarray, counts: np.ndarray) -> list[Detections]:
    """Per-image `Detections` from host copies of `Fixed.rows` (any width >= the counts) and counts."""
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
    and the images it flags answered by `torch_decode` (the same boxes, dynamically)."""
    device = raw.device
    conf, iou, max_det = (np.asarray(v) for v in zip(*limits))
    multi = None if not multi_label or not any(multi_label) else torch.tensor(list(multi_label), device=device)
    fixed = fixed_nms(
        raw, best, torch.from_numpy(conf.astype(np.float32)).to(device),
        torch.from_numpy(iou.astype(np.float32)).to(device), torch.from_numpy(max_det.astype(np.int64)).to(device),
        torch.from_numpy(np.ascontiguousarray(letterbox_rows, np.float32)).to(device), multi, k,
    )
    width = int(min(fixed.rows.shape[1], max(int(max_det.max()), 1)))
    rows, counts, exact = (t.cpu().numpy() for t in (fixed.rows[:, :width], fixed.counts, fixed.exact))
    out = to_detections(rows, counts)
    return redo_inexact(out, exact, raw, letterbox_rows, limits, multi_label, best)


def redo_inexact(
    out: list[Detections], exact: np.ndarray, raw: torch.Tensor, letterbox_rows: np.ndarray,
    limits: Sequence[tuple[float, float, int]], multi_label: Sequence[bool] | None,
    best: tuple[torch.Tensor, torch.Tensor] | None,
) -> list[Detections]:
    """Replace the images `fixed_nms` flagged with `torch_decode`'s answer for them."""
    redo = np.flatnonzero(~exact)
    if redo.size == 0:
        return out
    index = torch.from_numpy(redo).to(raw.device)
    again = torch_decode.postprocess_batch(
        raw[index], letterbox_rows[redo], [limits[i] for i in redo],
        None if multi_label is None else [multi_label[i] for i in redo],
        None if best is None else (best[0][index], best[1][index]),
    )
    for i, d in zip(redo.tolist(), again):
        out[i] = d
    return out


OPTIONS = 9  # per image on the graphed path: conf, iou, max_det, then the LETTERBOX row


def options_row(limits: tuple[float, float, int], letterbox_row: np.ndarray) -> list[float]:
    """One image's row of `GraphedNms`'s option buffer (max_det is exact in float32 up to 2^24)."""
    return [*limits, *letterbox_row]


TIERS = (256, CANDIDATES)  # GraphedNms's candidate buffers, tried smallest first


class GraphedNms:
    """`fixed_nms` replayed from CUDA graphs per batch bucket, on the network graphs' outputs.

    The network graph of each bucket leaves its output and best classes in static buffers
    (`GraphedNetwork.static_tail`); these graphs read them there, so between the network and the
    answers the host only writes the images' options into a pinned buffer, queues one copy in,
    one replay and one copy out of the kept rows, then waits once.

    The candidate buffer comes in tiers (`TIERS`): the k x k IoU work of 1024 candidates dominates
    large batches (H200, crowded bus.jpg at 640: 1.72 ms a call at batch 32 against 0.39 ms for
    256). The smallest tier replays first; only when an image has more candidates (or unsettled
    passes) does the next tier replay, and past the last the caller answers those images eagerly
    (`redo_inexact`). The ops stay eager inside the graphs: compiled by TorchInductor they ran in
    0.17 against 0.28 ms at batch 1, but moved boxes in their last bits (the map back to the
    image), and these rows must equal `torch_decode`'s exactly.
    """

    def __init__(
        self, tails: dict, device: torch.device, tiers: Sequence[int] = TIERS, iterations: int = ITERATIONS,
    ) -> None:
        self.buckets = tuple(sorted(tails))
        top = self.buckets[-1]
        self.device = device
        self.options_host = torch.zeros((top, OPTIONS), dtype=torch.float32, pin_memory=True)
        self.options = torch.zeros((top, OPTIONS), dtype=torch.float32, device=device)
        self.options[:, 0] = 1.0  # no candidates in rows nobody wrote
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}  # (bucket, tier) -> graph
        self.packed: dict[tuple[int, int], torch.Tensor] = {}  # pack(fixed_nms(...)), written by that graph
        self.tiers = tuple(sorted({min(k, tails[top].raw.shape[2]) for k in tiers}))

        def run(b: int, k: int) -> torch.Tensor:
            tail = tails[b]
            o = self.options[:b]
            return pack(fixed_nms(tail.raw, (tail.scores, tail.classes), o[:, 0], o[:, 1], o[:, 2].long(), o[:, 3:],
                           None, k, iterations))

        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for b in reversed(self.buckets):  # largest first: the pool is sized once
                for k in reversed(self.tiers):
                    run(b, k)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool, stream=side):
                        self.packed[b, k] = run(b, k)
                    self.graphs[b, k] = graph
        torch.cuda.current_stream(device).wait_stream(side)
        self.k = self.tiers[-1]
        self.packed_host = torch.zeros(top * (HEADER + self.k * ROW), dtype=torch.float32, pin_memory=True)
        self.done = torch.cuda.Event()
        self.escalations = 0  # calls that needed a larger tier than the first
        torch.cuda.synchronize(device)

    def __call__(self, options: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, counts, exact) for the first len(options) images of the last network replay.

        `options` is (n, OPTIONS) float32 (`options_row`); rows are (n, width, ROW) with width the
        largest MAX_DETECTIONS asked for (at most the tier's k): only those come to the host, with
        each image's count and flag in front of its rows, in one copy (a copy is a launch and tens
        of microseconds of Python at concurrency 1).
        """
        n = len(options)
        b = next(x for x in self.buckets if x >= n)
        stream = torch.cuda.current_stream(self.device)  # named once: a bare record() looks it up slowly
        host = self.options_host.numpy()
        host[:n] = options
        host[n:b] = 0.0
        host[n:b, 0] = 1.0  # the bucket's padding images: no candidates, no work
        self.options[:b].copy_(self.options_host[:b], non_blocking=True)
        asked = max(1, int(options[:, 2].max()))
        for k in self.tiers:
            self.graphs[b, k].replay()
            width = min(k, asked)
            got = self.packed_host[: n * (HEADER + width * ROW)].view(n, HEADER + width * ROW)
            got.copy_(self.packed[b, k][:n, : HEADER + width * ROW], non_blocking=True)
            self.done.record(stream)
            self.done.synchronize()  # the one wait between the network and the answers, unless a tier is too small
            table = got.numpy()
            exact = table[:, 1] > 0.5
            if exact.all() or k == self.tiers[-1]:
                break
            self.escalations += 1
        return table[:, HEADER:].reshape(n, width, ROW), table[:, 0].astype(np.int64), exact


HEADER = 2  # per image in GraphedNms's one copy out: its count of kept rows, then its exact flag


def pack(fixed: Fixed) -> torch.Tensor:
    """(b, HEADER + k * ROW) float32: each image's count (exact in float32 up to 2^24), exact flag
    and rows, so that one copy brings all three to the host."""
    b = fixed.rows.shape[0]
    return torch.cat((fixed.counts[:, None].float(), fixed.exact[:, None].float(), fixed.rows.reshape(b, -1)), 1)
