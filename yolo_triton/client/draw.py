"""Annotated images for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from yolo_triton.pipeline.nms import Detections


def _colour(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k + 7)
    return tuple(int(c) for c in rng.integers(60, 255, 3))


FONT = cv2.FONT_HERSHEY_SIMPLEX


def annotate(image: np.ndarray, det: Detections, names: tuple[str, ...]) -> np.ndarray:
    out = image.copy()
    h, w = image.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    for box, score, k in zip(det.boxes, det.scores, det.classes):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(int(k))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        label = f"{names[k] if 0 <= k < len(names) else k} {score:.2f}"
        cv2.putText(out, label, label_origin(label, (x1, y1), (w, h), thick), FONT, 0.4 * thick, colour, thick)
    return out


def label_origin(label: str, corner: tuple[int, int], size: tuple[int, int], thick: int) -> tuple[int, int]:
    """Where a box's label starts so all of it shows: above the box's top-left corner, moved left
    from the right edge and below the top edge (a box at the border would clip it otherwise)."""
    (tw, th), base = cv2.getTextSize(label, FONT, 0.4 * thick, thick)
    x = max(0, min(corner[0], size[0] - tw - 1))
    y = corner[1] - 4 if corner[1] - 4 - th >= 0 else corner[1] + th + 4
    return x, min(y, size[1] - base - 1)
