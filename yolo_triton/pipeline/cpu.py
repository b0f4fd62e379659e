"""The CPU pipeline: letterbox (NumPy, OpenCV), network (ONNX Runtime), decode + NMS (NumPy).

Three stage objects, and `CpuPipeline` that runs them in one call for the fused model
`yolov8n_ort_fused`; the staged ensemble `yolov8n_ort` calls the same objects from three python
models. On two cores the glue between those three models (two more Triton<->stub hops, the 1.2
MB float input copied through shared memory twice, three processes taking turns) costs what
users notice; fused, every image goes from its request straight into one preallocated batch
buffer and one ONNX Runtime run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.pipeline import encoded, geometry
from yolo_triton.pipeline.ort_session import make_session
from yolo_triton.pipeline.postprocess import postprocess_batch
from yolo_triton.pipeline.protocol import Limits, Outputs, Watch
from yolo_triton.pipeline.validation import InputError

Piece = np.ndarray | encoded.EncodedFile  # a request's same-size images, or one file to decode


class Letterbox:
    """Images of any size -> the network's float input, in buffers preallocated for MAX_BATCH images."""

    def __init__(self, imgsz: int) -> None:
        self.imgsz = imgsz
        self._canvas = np.empty((spec.MAX_BATCH, imgsz, imgsz, 3), np.uint8)
        self._pixels = np.empty((spec.MAX_BATCH, 3, imgsz, imgsz), np.float32)

    def __call__(self, batches: Sequence[Piece]) -> tuple[np.ndarray, list[np.ndarray | InputError]]:
        """(pixels for every image, valid until the next call; LETTERBOX rows per piece).

        Arrays are checked by the caller (validation.check_images). An encoded file is decoded
        here, letterboxed and let go before the next one is decoded, so a batch never holds more
        than one decoded file. One that does not decode as its header said gets its InputError in
        place of its rows; its slot of the batch is left as it was, and its answer is that error."""
        total = sum(b.shape[0] for b in batches)
        if total > spec.MAX_BATCH:  # the config's max_batch_size: cannot happen inside Triton
            raise ValueError(f"{total} images in one execute exceed the batch buffer ({spec.MAX_BATCH})")
        rows: list[np.ndarray | InputError] = []
        start = 0
        for b in batches:
            n = b.shape[0]
            try:
                images = b.pixels() if isinstance(b, encoded.EncodedFile) else b
            except InputError as e:
                rows.append(e)
            else:
                rows.append(geometry.letterbox_into(images, self._canvas[start : start + n]))
                del images  # a decoded file goes before the next one is decoded
            start += n
        return geometry.to_pixels(self._canvas[:total], out=self._pixels[:total]), rows


class OrtNetwork:
    """The ONNX detector in ONNX Runtime: one run for the whole batch, where batching pays on a CPU."""

    def __init__(self, onnx: Path, imgsz: int) -> None:
        self.session = make_session(onnx)
        # Warm up: the first client request must not pay for ONNX Runtime's lazy initialisation.
        self(np.zeros((1, 3, imgsz, imgsz), np.float32))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([spec.RAW.name], {spec.PIXELS.name: pixels})[0]


class Decode:
    """Network output -> each request's detections in its images' pixels (decode, NMS, map back).

    A request whose NMS exceeds the server's budget (`nms.NMS_PAIRS_PER_ANCHOR`) gets its
    InputError in its place, to be answered INVALID_ARG; the requests it was batched with are
    still served."""

    def __call__(
        self, raw: np.ndarray, rows: Sequence[np.ndarray | InputError], limits: Sequence[Limits],
        multi: Sequence[list[bool]],
    ) -> list[Outputs | InputError]:
        """`rows` per request (or piece); an InputError there (a file that did not decode) is passed on."""
        out: list[Outputs | InputError] = []
        start = 0
        for lb, lim, ml in zip(rows, limits, multi):
            if isinstance(lb, InputError):
                out.append(lb)
                start += len(lim)
                continue
            n = lb.shape[0]
            try:
                out.append(postprocess_batch(raw[start : start + n], lb, lim, ml))
            except InputError as e:
                out.append(e)
            start += n
        return out


def _untimed(_stage: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class CpuPipeline:
    """Letterbox -> ONNX Runtime -> decode/NMS for the requests of one execute() (protocol.Pipeline)."""

    def __init__(self, onnx: Path, imgsz: int) -> None:
        self.letterbox = Letterbox(imgsz)
        self.network = OrtNetwork(onnx, imgsz)
        self.decode = Decode()
        self([np.zeros((1, *spec.WARMUP_FRAME), np.uint8)], [[(spec.DEFAULT_CONF, spec.DEFAULT_IOU, 10)]], [[False]])

    def __call__(
        self, batches: Sequence[Piece], limits: Sequence[Limits], multi: Sequence[list[bool]],
        watch: Watch | None = None,
    ) -> list[Outputs | InputError]:
        watch = watch or _untimed
        with watch("preprocess"):
            pixels, rows = self.letterbox(batches)
        with watch("network"):
            raw = self.network(pixels)
        with watch("postprocess"):
            return self.decode(raw, rows, limits, multi)
