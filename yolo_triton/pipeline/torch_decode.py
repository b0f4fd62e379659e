"""Decode + batched NMS in PyTorch: `decode_batch` ~ `nms.decode`, the NumPy definition.

Same strict `>` on confidence, same 30000-candidate cap, same float32 class offsets, same
`IoU > threshold` suppression, same max_det. Mapping boxes back to the image stays
`geometry.unletterbox` on the few final boxes. tests/test_gpu.py checks each against its
original on CPU tensors, so CI guards them without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from yolo_triton.pipeline import geometry
from yolo_triton.pipeline.nms import MAX_NMS, MAX_WH, Detections


def xywh2xyxy(xywh: torch.Tensor) -> torch.Tensor:
    """`nms.xywh2xyxy` term by term (half-size subtracted/added), on (n, 4) rows."""
    half = xywh[:, 2:] / 2
    return torch.cat((xywh[:, :2] - half, xywh[:, :2] + half), 1)


@dataclass(frozen=True)
class BatchDetections:
    """Detections of a batch in network-input pixels, grouped by image, best score first."""

    boxes: torch.Tensor  # (k, 4) float32 xyxy
    scores: torch.Tensor  # (k,) float32
    classes: torch.Tensor  # (k,) int64
    image: torch.Tensor  # (k,) int64, non-decreasing

    def to_numpy(self, n: int) -> list[Detections]:
        """Per-image `Detections` after one device-to-host copy of everything."""
        packed = torch.cat(
            (self.boxes, self.scores[:, None], self.classes[:, None].float(), self.image[:, None].float()), 1
        ).cpu().numpy()
        counts = np.bincount(packed[:, 6].astype(np.int64), minlength=n)
        out, start = [], 0
        for c in counts:
            rows = packed[start : start + c]
            out.append(Detections(rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5].astype(np.int32)))
            start += c
        return out


def _multi_label_candidates(
    raw: torch.Tensor, conf: float | torch.Tensor, multi_label: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, anchor, class, score) of every candidate when some image asks for multi-label.

    Multi-label images keep every (anchor, class) pair above the threshold, the others their best
    class only; pairs come anchor-major within an image, like `nms._candidates`.
    """
    n, rows, anchors = raw.shape
    s3 = raw[:, 4:, :].transpose(1, 2)  # (n, anchors, nc) view
    thr = conf if isinstance(conf, float) else conf[:, :, None]
    mask = s3 > thr
    if not all(multi_label):
        best = torch.zeros_like(mask).scatter_(2, s3.argmax(2, keepdim=True), True)
        flags = torch.tensor(list(multi_label), device=raw.device)[:, None, None]
        mask = torch.where(flags, mask, mask & best)
    if anchors * (rows - 4) > MAX_NMS:  # each image's MAX_NMS best pairs at most
        flat = s3.masked_fill(~mask, float("-inf")).reshape(n, -1)
        capped = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(MAX_NMS, dim=1).indices, True)
        mask &= capped.view_as(mask)
    img, anchor, cls = mask.nonzero(as_tuple=True)
    return img, anchor, cls, s3[img, anchor, cls]


def best_class(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's best class score and class, (n, anchors) each, as `nms.decode` ranks them."""
    return raw[:, 4:, :].max(1)


def decode_batch(
    raw: torch.Tensor, conf: Sequence[float], iou: Sequence[float], max_det: Sequence[int],
    multi_label: Sequence[bool] | None = None, best: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> BatchDetections:
    """`nms.decode` for every image of a (n, 4 + nc, anchors) batch with one NMS launch per IoU value.

    Thresholds are per image. Images are kept apart in one NMS by adding a per-image offset in
    float64 on top of Ultralytics' float32 class offset, so every box is compared exactly as
    `nms.decode` compares it, yet a batch costs a few kernel launches and three host
    synchronisations (candidates, NMS, result) instead of a loop over images. Thresholds shared
    by the whole batch (the usual case) stay Python scalars: no host-to-device copies. `best` is
    `best_class(raw)` when the caller already has it (computed inside a CUDA graph).
    """
    import torchvision

    n, rows, anchors = raw.shape
    nc = rows - 4
    device = raw.device
    # strict '>' as Ultralytics
    thr = float(conf[0]) if len(set(conf)) == 1 else torch.tensor(list(conf), dtype=torch.float32).to(device)[:, None]
    if multi_label is not None and any(multi_label):
        img, anchor, cand_classes, cand_scores = _multi_label_candidates(raw, thr, multi_label)  # sync 1
    else:
        scores, classes = best if best is not None else best_class(raw)  # (n, anchors)
        mask = scores > thr
        if anchors > MAX_NMS:  # keep only each image's MAX_NMS best candidates
            top = scores.masked_fill(~mask, float("-inf")).topk(MAX_NMS, dim=1).indices
            capped = torch.zeros_like(mask)
            capped.scatter_(1, top, True)
            mask &= capped
        img, anchor = mask.nonzero(as_tuple=True)  # sync 1; anchor order within an image, as NumPy
        cand_scores, cand_classes = scores[img, anchor], classes[img, anchor]
    if img.numel() == 0:  # host tensors: nothing left to copy back, no further synchronisation
        empty = torch.zeros(0, dtype=torch.int64)
        return BatchDetections(torch.zeros((0, 4)), torch.zeros(0), empty, empty)
    boxes = xywh2xyxy(raw[img, :4, anchor].float())
    cand_scores = cand_scores.float()
    offset_boxes = boxes + (cand_classes[:, None] * MAX_WH).float()  # float32, like nms.decode
    if n > 1:  # images apart: offsets past any class offset; float64 keeps the float32 sums exact
        image_gap = float((nc + 2) * MAX_WH + 4096)
        separated = offset_boxes.double() + (img.double() * image_gap)[:, None]
        nms_scores = cand_scores.double()  # torchvision wants boxes and scores of one dtype
    else:
        separated, nms_scores = offset_boxes, cand_scores
    kept_parts = []
    for value in sorted(set(iou)):  # usually a single value: one NMS for the whole batch
        if len(set(iou)) == 1:
            kept_parts.append(torchvision.ops.nms(separated, nms_scores, float(value)))  # sync 2
            continue
        sel = torch.tensor([i for i, u in enumerate(iou) if u == value], device=device)
        idx = torch.isin(img, sel).nonzero(as_tuple=True)[0]
        kept_parts.append(idx[torchvision.ops.nms(separated[idx], nms_scores[idx], float(value))])
    if len(kept_parts) == 1:
        kept = kept_parts[0]  # descending score
    else:  # restore one global score order before grouping
        kept = torch.cat(kept_parts)
        kept = kept[torch.sort(cand_scores[kept], descending=True, stable=True).indices]
    if n == 1:
        kept = kept[: int(max_det[0])]
    else:  # group by image keeping score order, then cut each image at its max_det
        kept = kept[torch.sort(img[kept], stable=True).indices]
        kept_img = img[kept]
        counts = torch.bincount(kept_img, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(kept), device=device) - starts[kept_img]
        if len(set(max_det)) == 1:
            kept = kept[rank < int(max_det[0])]
        else:
            kept = kept[rank < torch.tensor(list(max_det), device=device)[kept_img]]
    return BatchDetections(boxes[kept], cand_scores[kept], cand_classes[kept], img[kept])


def postprocess_batch(
    raw: torch.Tensor, letterbox_rows: np.ndarray, limits: list[tuple[float, float, int]],
    multi_label: Sequence[bool] | None = None, best: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Detections]:
    """`postprocess.postprocess_one` for a batch: decode + NMS on raw's device, unletterbox on host."""
    conf, iou, max_det = zip(*limits)
    dets = decode_batch(raw, conf, iou, max_det, multi_label, best).to_numpy(raw.shape[0])
    return [
        Detections(geometry.unletterbox(d.boxes, letterbox_rows[i]), d.scores, d.classes) if len(d.scores) else d
        for i, d in enumerate(dets)
    ]
