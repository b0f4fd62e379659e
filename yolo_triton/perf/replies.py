"""Is a reply well-formed detections? The check a load test runs on every answer it gets.

A server under load can answer fast and wrong (a truncated tensor, a box outside the image, a
score of 3), which latency figures alone never show; the soak counts such replies as failures.
"""

from __future__ import annotations

import numpy as np

from yolo_triton import spec


class GrpcError(Exception):
    """A request the server failed; the message starts with the gRPC status name."""


class Malformed(Exception):
    """A reply that arrived but does not hold well-formed detections."""


def malformed(outputs: dict[str, np.ndarray | None], height: int, width: int, num_classes: int) -> str | None:
    """What is wrong with one single-image reply, or None when it is well-formed."""
    arrays = {}
    for t in spec.ENSEMBLE_OUTPUTS:
        a = outputs.get(t.name)
        if a is None:
            return f"{t.name} missing"
        if a.dtype != t.np_dtype:
            return f"{t.name} is {a.dtype}, expected {t.np_dtype}"
        arrays[t.name] = a
    boxes, scores = arrays[spec.BOXES.name], arrays[spec.SCORES.name]
    classes, counts = arrays[spec.CLASSES.name], arrays[spec.NUM_DETECTIONS.name]
    if boxes.ndim != 3 or boxes.shape[0] != 1 or boxes.shape[2] != 4:
        return f"BOXES shape {list(boxes.shape)}, expected [1, N, 4]"
    rows = boxes.shape[1]
    if scores.shape != (1, rows) or classes.shape != (1, rows) or counts.shape != (1, 1):
        return (f"shapes disagree: BOXES {list(boxes.shape)}, SCORES {list(scores.shape)}, "
                f"CLASSES {list(classes.shape)}, NUM_DETECTIONS {list(counts.shape)}")
    k = int(counts[0, 0])
    if not 0 <= k <= rows:
        return f"NUM_DETECTIONS {k} outside [0, {rows}]"
    b, s, c = boxes[0, :k], scores[0, :k], classes[0, :k]
    if not np.isfinite(b).all() or not np.isfinite(s).all():
        return "non-finite box or score"
    if ((s <= 0) | (s > 1)).any():
        return f"score outside (0, 1]: {s.min():.4f}..{s.max():.4f}"
    if ((c < 0) | (c >= num_classes)).any():
        return f"class id outside [0, {num_classes})"
    tol = 1e-3
    if ((b[:, 0] > b[:, 2] + tol) | (b[:, 1] > b[:, 3] + tol)).any():
        return "box with x1 > x2 or y1 > y2"
    if ((b < -tol).any() or (b[:, [0, 2]] > width + tol).any() or (b[:, [1, 3]] > height + tol).any()):
        return f"box outside the {width}x{height} image"
    return None
