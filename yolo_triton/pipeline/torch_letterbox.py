"""The letterbox on the GPU: `letterbox_batch` ~ `geometry.letterbox` + `geometry.to_pixels`.

The plan comes from `geometry.plan`, the NumPy definition; the pixels from one Triton kernel per
request (`letterbox_kernels`), written straight into the network's input buffer, whatever its
float dtype. tests/test_gpu.py checks it against OpenCV's letterbox on CPU tensors (the kernel in
Triton's interpreter), so CI guards it without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from yolo_triton.pipeline import letterbox_kernels


def letterbox_batch(images: torch.Tensor, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Same-size BGR uint8 NHWC images -> letterboxed RGB NCHW in [0, 1] (float32 unless `out` is given).

    Equals `to_pixels(letterbox(img))` for each image up to bilinear rounding (OpenCV's uint8
    resize uses fixed-point weights; here the float result is rounded to the nearest level, so a
    pixel differs by at most one level).
    """
    n = images.shape[0]
    canvas = out if out is not None else torch.empty((n, 3, size, size), dtype=torch.float32, device=images.device)
    letterbox_kernels.letterbox_into(images, canvas)
    return canvas


def letterbox_many(batches: Sequence[torch.Tensor], out: torch.Tensor) -> np.ndarray:
    """Letterbox a list of NHWC batches (one per request, any sizes) into `out[:total]`, in order;
    `out` (n, 3, S, S) may be any float dtype, e.g. a CUDA graph's FP16 input. Returns the
    LETTERBOX rows, (total, 6) float32, from `geometry.plan`."""
    rows, start = [], 0
    for images in batches:
        n = images.shape[0]
        lb = letterbox_kernels.letterbox_into(images, out[start : start + n])
        rows.append(np.repeat(lb.as_array()[None], n, axis=0))
        start += n
    return np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)
