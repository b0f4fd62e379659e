"""INT8 calibration: which images, the cache's identity, the batches, and the calibrator fed with them.

The batches are made exactly as the served preprocess makes its input, so the ranges TensorRT
measures are the ranges it will see; the calibration cache is named by everything the table
depends on, so a changed network, data set or shape never reuses a stale one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from yolo_triton.repository.tensorrt.gpus import short_version
from yolo_triton.repository.tensorrt.settings import BuildError, BuildSettings

MAX_CALIB_IMAGES = 512  # TensorRT's guidance: ~500 representative images are enough for calibration


def calibration_images(folder: Path, limit: int = MAX_CALIB_IMAGES) -> list[Path]:
    """The image files under `folder` (sorted, at most `limit`, evenly spread over the list)."""
    from yolo_triton.client.images import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise BuildError(f"--calib-images {folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def calibration_digest(onnx_sha: str, files: Sequence[Path], imgsz: int, batch: int, trt_version: str) -> str:
    """Identity of a calibration: the cache is reused only for the same network, data and shapes."""
    h = hashlib.sha256(f"{onnx_sha}|{imgsz}|{batch}|{short_version(trt_version).rsplit('.', 1)[0]}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.name}:{st.st_size}".encode())
    return h.hexdigest()[:16]


def calibration_batches(files: Sequence[Path], imgsz: int, batch: int) -> Iterator[np.ndarray]:
    """Network inputs exactly as the served preprocess makes them, `batch` images at a time.

    TensorRT 10 calibrates at the profile's opt shape, so every batch is full: a remainder
    smaller than `batch` is left out.
    """
    if len(files) < batch:
        raise BuildError(f"INT8 calibration needs at least {batch} images (one batch at the opt batch size), "
                         f"found {len(files)}")
    for start in range(0, len(files) - batch + 1, batch):
        yield network_inputs(files[start:start + batch], imgsz)


def network_inputs(files: Sequence[Path], imgsz: int) -> np.ndarray:
    """float32 [N, 3, S, S]: each image file as the served preprocess makes the network's input.

    Every calibration uses it: TensorRT's INT8 table, ONNX Runtime's INT8 ranges
    (repository.quantize) and the crowded checkpoint's BatchNorm statistics (data.crowded)."""
    from yolo_triton.client import images
    from yolo_triton.pipeline import geometry

    canvases = np.empty((len(files), imgsz, imgsz, 3), np.uint8)
    for i, path in enumerate(files):
        geometry.letterbox(images.read(path), imgsz, out=canvases[i])
    return geometry.to_pixels(canvases)


def layers_kept_in_float(layer_names: Sequence[str]) -> dict[str, str]:
    """Head layers that INT8 would hurt most, and the precision to keep them in.

    The class-score Sigmoid stays FP32 (scores near the threshold decide what is detected) and
    the DFL box-decoding convolution FP16 (box coordinates span 0..imgsz pixels, far beyond what
    one INT8 scale resolves). The head is the highest-numbered `/model.N/` block.
    """
    blocks = [int(m.group(1)) for n in layer_names if (m := re.search(r"/model\.(\d+)/", n))]
    if not blocks:
        return {}
    head = f"/model.{max(blocks)}/"
    keep = {}
    for n in layer_names:
        if head not in n:
            continue
        if n.rsplit("/", 1)[-1].startswith("Sigmoid"):
            keep[n] = "float32"
        elif "/dfl/" in n and n.endswith("Conv"):
            keep[n] = "float16"
    return keep


def int8_calibrator(trt, s: BuildSettings, files: Sequence[Path]):  # noqa: ANN001, ANN202 - tensorrt types
    """An INT8 calibrator fed with letterboxed images, caching its table in s.calib_cache.

    MinMax rather than entropy calibration: output0 carries box coordinates (0..imgsz pixels)
    next to class scores (0..1), and entropy calibration clips the large box values.
    """
    import torch

    batches = calibration_batches(files, s.imgsz, s.opt_batch) if files else iter(())
    cache = s.calib_cache

    class Calibrator(trt.IInt8MinMaxCalibrator):
        def __init__(self) -> None:
            trt.IInt8MinMaxCalibrator.__init__(self)
            self.device = torch.empty(s.shapes["opt"], dtype=torch.float32, device="cuda")
            self.error: Exception | None = None  # raised after the build: not through TensorRT's callback

        def get_batch_size(self) -> int:
            return s.opt_batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(batches, None)
            except Exception as e:  # noqa: BLE001 - an unreadable image: stop calibrating, report after
                self.error = e
                return None
            if batch is None:
                return None
            self.device.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

    return Calibrator()
