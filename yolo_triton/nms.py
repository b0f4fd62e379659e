"""Decode YOLOv8 detector output and run per-class NMS, in NumPy.

Mirrors `ultralytics.utils.nms.non_max_suppression` (single label per box, strict `>` on the
confidence threshold, at most 30000 candidates into NMS, classes separated by a 7680-pixel
offset, suppression when IoU > threshold) so that the served pipeline returns what
Ultralytics returns for the same network output.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAX_NMS = 30000
MAX_WH = 7680


class Detections(NamedTuple):
    """Boxes are xyxy; one row per detection, best score first."""

    boxes: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int32

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))


def xywh2xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; indices of kept boxes in descending score order.

    Equal scores keep their input order (stable sort), as torchvision's CPU kernel does.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]  # NaN IoU (degenerate boxes) does not suppress
    return np.asarray(keep, dtype=np.int64)


def _candidates(raw: np.ndarray, conf: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor index, score, class) of every candidate above `conf`, in Ultralytics' order.

    Single label: the best class per anchor. Multi label (the validator's protocol): every
    (anchor, class) pair above the threshold, anchor-major like `torch.where(cls > conf)`.
    """
    scores_all = raw[4:]
    if multi_label:
        anchors, classes = np.nonzero(scores_all.T > conf)
        return anchors, scores_all[classes, anchors], classes
    classes = scores_all.argmax(0)
    scores = scores_all[classes, np.arange(raw.shape[1])]
    keep = np.flatnonzero(scores > conf)
    return keep, scores[keep], classes[keep]


def decode(raw: np.ndarray, conf: float, iou: float, max_det: int, multi_label: bool = False) -> Detections:
    """One image's detector output (4 + nc, anchors) -> detections in network-input pixels."""
    keep, scores, classes = _candidates(raw, conf, multi_label)
    if keep.size == 0:
        return Detections.empty()
    if keep.size > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        keep, scores, classes = keep[top], scores[top], classes[top]
    boxes = xywh2xyxy(raw[:4, keep].T.astype(np.float32))
    scores, classes = scores.astype(np.float32), classes.astype(np.int32)
    offsets = (classes[:, None] * MAX_WH).astype(np.float32)  # float32 like Ultralytics' torch math
    kept = nms(boxes + offsets, scores, iou)[:max_det]
    return Detections(boxes[kept], scores[kept], classes[kept])
