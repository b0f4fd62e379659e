"""Batch-level postprocess shared by the server model and by offline (client-side) decoding."""

from __future__ import annotations

import numpy as np

from yolo_triton.pipeline.geometry import unletterbox
from yolo_triton.pipeline.nms import Detections, NmsBudgetExceeded, PairBudget, decode


def postprocess_one(raw: np.ndarray, lb: np.ndarray, conf: float, iou: float, max_det: int,
                    multi_label: bool = False, budget: PairBudget | None = None) -> Detections:
    """One image: (4 + nc, anchors) output and its LETTERBOX row -> detections in image pixels.

    `budget`: the NMS work this image may cost (None: unbounded); see `nms.NMS_PAIRS_PER_ANCHOR`."""
    det = decode(raw, conf, iou, max_det, multi_label, budget)
    return Detections(unletterbox(det.boxes, lb), det.scores, det.classes) if len(det.scores) else det


def pad_batch(dets: list[Detections]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stack per-image detections into BOXES, SCORES, CLASSES (padded) and NUM_DETECTIONS."""
    n = len(dets)
    most = max((len(d.scores) for d in dets), default=0)
    boxes = np.zeros((n, most, 4), np.float32)
    scores = np.zeros((n, most), np.float32)
    classes = np.full((n, most), -1, np.int32)
    counts = np.zeros((n, 1), np.int32)
    for i, d in enumerate(dets):
        k = len(d.scores)
        boxes[i, :k], scores[i, :k], classes[i, :k], counts[i, 0] = d.boxes, d.scores, d.classes, k
    return boxes, scores, classes, counts


def merge(outputs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Several padded outputs (pad_batch's) as one, padded to the longest: the answer of a request
    whose images were run as several batches (encoded images of different sizes)."""
    return pad_batch([d for o in outputs for d in unpad(*o)])


def postprocess_batch(
    raw: np.ndarray,
    lb: np.ndarray,
    limits: list[tuple[float, float, int]],
    multi_label: list[bool] | None = None,
    bounded: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One request's images -> its padded outputs.

    `bounded` (what the servers use): each image's NMS gets the server's counted budget
    (`PairBudget.for_anchors`), so no request can hold the model for more than a bounded
    multiple of its network time; an image over it raises NmsBudgetExceeded, an InputError the
    models answer with INVALID_ARG for this request only. Nothing is ever silently truncated.
    """
    flags = multi_label or [False] * raw.shape[0]
    dets = []
    for i in range(raw.shape[0]):
        budget = PairBudget.for_anchors(raw.shape[2]) if bounded else None
        try:
            dets.append(postprocess_one(raw[i], lb[i], *limits[i], flags[i], budget))
        except NmsBudgetExceeded as e:
            raise NmsBudgetExceeded(f"image {i} of {raw.shape[0]}: {e}") from None
    return pad_batch(dets)


def unpad(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, counts: np.ndarray) -> list[Detections]:
    """Inverse of pad_batch: what a client does with a response."""
    return [
        Detections(boxes[i, : int(c)], scores[i, : int(c)], classes[i, : int(c)])
        for i, c in enumerate(np.asarray(counts).reshape(-1))
    ]
