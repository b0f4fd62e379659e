"""Checks on what arrives from outside, shared by the server models and the clients.

Every failure is an `InputError` whose message names the tensor and the problem; the
python-backend models turn it into an INVALID_ARG response, so a bad request never takes
the model (or the batch it was grouped with) down.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from yolo_triton import spec

MAX_DETECTIONS_LIMIT = 10_000  # NMS keeps at most this many boxes per image


class InputError(ValueError):
    """A request that cannot be served as sent."""


def check_images(images: np.ndarray) -> np.ndarray:
    """A batch of decoded images: uint8, shape (batch, height, width, 3), within size bounds.

    Only the array's metadata is read, so a client can refuse an oversized image before it
    serialises (and the server before it letterboxes) hundreds of megabytes.
    """
    name = spec.IMAGE.name
    if not isinstance(images, np.ndarray):
        raise InputError(f"{name}: expected a numpy array of decoded pixels, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise InputError(f"{name}: dtype must be uint8 (decoded HWC BGR pixels), got {images.dtype}")
    check_image_shape(images.shape)
    return images


def check_image_shape(shape: Sequence[int]) -> None:
    """The shape half of `check_images`, for a uint8 batch that is not a NumPy array (a GPU tensor:
    Triton has enforced the dtype). Plain integer checks: they run on every request's hot path."""
    name = spec.IMAGE.name
    if len(shape) != 4:
        raise InputError(f"{name}: expected shape [batch, height, width, 3], got rank {len(shape)} {list(shape)}")
    batch, h, w, c = (int(s) for s in shape)
    if batch < 1:
        raise InputError(f"{name}: empty batch")
    if batch > spec.MAX_BATCH:
        raise InputError(f"{name}: batch of {batch} exceeds the limit of {spec.MAX_BATCH}")
    if c != 3:
        raise InputError(f"{name}: expected 3 channels (BGR), got {c}; convert grayscale/RGBA before sending")
    if h < 1 or w < 1:
        raise InputError(f"{name}: image has zero size {h}x{w}")
    if max(h, w) > spec.MAX_IMAGE_SIDE or h * w > spec.MAX_IMAGE_PIXELS:
        raise InputError(
            f"{name}: image {w}x{h} exceeds the limit ({spec.MAX_IMAGE_SIDE} px per side, "
            f"{spec.MAX_IMAGE_PIXELS} px in all); downscale it before sending"
        )


def _scalar(name: str, value: np.ndarray | float | None, batch: int) -> list | None:
    """One value per image (or one for all), as Python numbers; arrays from the server, plain
    numbers from clients. `tolist` converts them in one call: per-element NumPy scalars and
    `np.broadcast_to` were a tenth of a GPU request's Python (docs/benchmarks.md)."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected a number, got {array.dtype} {value!r:.40}")
    flat = array.reshape(-1)
    if flat.size == batch:
        return flat.tolist()
    if flat.size == 1:
        return flat.tolist() * batch
    raise InputError(f"{name}: expected one value per image (shape [batch, 1]), got {list(array.shape)}")


def check_thresholds(
    batch: int,
    conf: np.ndarray | float | None,
    iou: np.ndarray | float | None,
    max_det: np.ndarray | int | None,
) -> list[tuple[float, float, int]]:
    """Per-image (conf, iou, max_det), with Ultralytics' defaults where a tensor is absent."""
    confs = _scalar(spec.CONF_THRESHOLD.name, conf, batch)
    ious = _scalar(spec.IOU_THRESHOLD.name, iou, batch)
    dets = _scalar(spec.MAX_DETECTIONS.name, max_det, batch)
    out = []
    for i in range(batch):
        c = spec.DEFAULT_CONF if confs is None else float(confs[i])  # float(): bools and ints too
        u = spec.DEFAULT_IOU if ious is None else float(ious[i])
        m = spec.DEFAULT_MAX_DET if dets is None else dets[i]
        for tname, v in ((spec.CONF_THRESHOLD.name, c), (spec.IOU_THRESHOLD.name, u)):
            if not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise InputError(f"{tname}: must be a finite number in [0, 1], got {v}")
        if not (math.isfinite(m) and float(m).is_integer() and 1 <= m <= MAX_DETECTIONS_LIMIT):
            raise InputError(
                f"{spec.MAX_DETECTIONS.name}: must be a whole number in [1, {MAX_DETECTIONS_LIMIT}], got {m}"
            )
        m = int(m)
        out.append((c, u, m))
    return out


def check_flags(name: str, value: np.ndarray | bool | None, batch: int) -> list[bool]:
    """A per-image on/off option (absent = off)."""
    flags = _scalar(name, value, batch)
    if flags is None:
        return [False] * batch
    if any(f not in (0, 1) for f in flags):  # 1.0 and True are 1; NaN is neither
        raise InputError(f"{name}: must be true or false, got {flags}")
    return [bool(f) for f in flags]


def request_options(
    read: Callable[[str], np.ndarray | None], batch: int
) -> tuple[list[tuple[float, float, int]], list[bool]]:
    """Per-image (conf, iou, max_det) and MULTI_LABEL flags of one request.

    `read(name)` returns an optional input as an array, or None when the request omits it; each
    python model reads tensors its own way (NumPy or DLPack), the checks are the same.
    """
    limits = check_thresholds(
        batch, read(spec.CONF_THRESHOLD.name), read(spec.IOU_THRESHOLD.name), read(spec.MAX_DETECTIONS.name)
    )
    return limits, check_flags(spec.MULTI_LABEL.name, read(spec.MULTI_LABEL.name), batch)
