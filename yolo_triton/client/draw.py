"""Annotated images for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from yolo_triton.pipeline.nms import Detections


def _colour(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k + 7)
    return tuple(int(c) for c in rng.integers(60, 255, 3))


def annotate(image: np.ndarray, det: Detections, names: tuple[str, ...]) -> np.ndarray:
    out = image.copy()
    thick = max(1, round(max(image.shape[:2]) / 400))
    for box, score, k in zip(det.boxes, det.scores, det.classes):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(int(k))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        label = f"{names[k] if 0 <= k < len(names) else k} {score:.2f}"
        cv2.putText(out, label, (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour, thick)
    return out
