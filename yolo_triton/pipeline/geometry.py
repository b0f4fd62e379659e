"""Letterbox and its inverse: the coordinate math shared by server models, clients and tests.

The formulas follow Ultralytics' `LetterBox` (square target, centred, scale-up allowed) and
`scale_boxes` term by term, including their rounding, so that served boxes agree with
`YOLO(...).predict` to float precision when both use the same square geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How one image was placed into the square network input."""

    gain_x: float
    gain_y: float
    pad_x: int
    pad_y: int
    orig_h: int
    orig_w: int
    new_w: int
    new_h: int

    def as_array(self) -> np.ndarray:
        """The LETTERBOX tensor row postprocess receives."""
        return np.array(
            [self.gain_x, self.gain_y, self.pad_x, self.pad_y, self.orig_h, self.orig_w], dtype=np.float32
        )


def plan(orig_h: int, orig_w: int, size: int) -> Letterbox:
    """Where an image of orig_h x orig_w lands in a size x size input."""
    r = min(size / orig_h, size / orig_w)
    new_w, new_h = max(round(orig_w * r), 1), max(round(orig_h * r), 1)
    left = round((size - new_w) / 2 - 0.1)
    top = round((size - new_h) / 2 - 0.1)
    return Letterbox(new_w / orig_w, new_h / orig_h, left, top, orig_h, orig_w, new_w, new_h)


def letterbox(image: np.ndarray, size: int, out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize (bilinear) and pad an HWC uint8 image into a size x size x 3 canvas.

    `out`, when given, is a preallocated canvas that is filled in place, which lets batched
    callers write straight into their batch buffer.
    """
    lb = plan(image.shape[0], image.shape[1], size)
    canvas = np.empty((size, size, 3), np.uint8) if out is None else out
    canvas[...] = PAD_VALUE
    region = canvas[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    if (lb.new_h, lb.new_w) == image.shape[:2]:
        region[...] = image
    else:  # cv2 cannot resize into a strided view, so one small copy remains
        region[...] = cv2.resize(image, (lb.new_w, lb.new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, lb


def letterbox_into(images: np.ndarray, canvases: np.ndarray) -> np.ndarray:
    """Letterbox each image of an NHWC batch into `canvases[i]` (a caller's preallocated batch
    buffer, so nothing is allocated per request); returns the batch's LETTERBOX rows."""
    size = canvases.shape[1]
    return np.stack([letterbox(img, size, out=canvases[i])[1].as_array() for i, img in enumerate(images)])


def to_pixels(canvases: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """BGR uint8 NHWC -> RGB float32 NCHW in [0, 1], the network's input layout."""
    n, h, w, _ = canvases.shape
    pixels = np.empty((n, 3, h, w), np.float32) if out is None else out
    for i in range(n):
        # cv2.split de-interleaves in one C pass; dividing contiguous planes is then twice as fast
        # as dividing stride-3 views of the canvas (0.31 -> 0.15 ms per image at 320, same floats).
        planes = cv2.split(canvases[i])
        for c in range(3):  # BGR -> RGB by plane index
            np.divide(planes[2 - c], np.float32(255.0), out=pixels[i, c], dtype=np.float32)
    return pixels


def unletterbox(boxes: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """Map xyxy boxes from network-input pixels back to the original image, clipped to it.

    `lb` is a LETTERBOX row: gain_x, gain_y, pad_x, pad_y, orig_h, orig_w.
    """
    gain_x, gain_y, pad_x, pad_y, orig_h, orig_w = (float(v) for v in lb)
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = ((out[:, [0, 2]] - pad_x) / gain_x).clip(0, orig_w)
    out[:, [1, 3]] = ((out[:, [1, 3]] - pad_y) / gain_y).clip(0, orig_h)
    return out
