"""The CPU pipeline in one call: letterbox, ONNX Runtime, decode + NMS.

What the fused model `yolov8n_ort_fused` runs in a single execute(), with the ensemble steps'
own functions (`geometry.letterbox_into` + `to_pixels`, `ort_session.make_session`,
`postprocess.postprocess_batch`). On two cores the glue between three python models (two more
Triton<->stub hops, the 1.2 MB float input copied through shared memory twice, three processes
taking turns) costs what users notice; here every image goes from its request straight into one
preallocated batch buffer and one ONNX Runtime run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.pipeline import geometry
from yolo_triton.pipeline.ort_session import make_session
from yolo_triton.pipeline.postprocess import postprocess_batch
from yolo_triton.pipeline.validation import InputError

Limits = list[tuple[float, float, int]]
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class OrtPipeline:
    """Letterbox -> ONNX Runtime -> NMS for a batch of requests, preallocated for MAX_BATCH images."""

    def __init__(self, onnx: Path, imgsz: int) -> None:
        self.session = make_session(onnx)
        self.imgsz = imgsz
        self._canvas = np.empty((spec.MAX_BATCH, imgsz, imgsz, 3), np.uint8)
        self._pixels = np.empty((spec.MAX_BATCH, 3, imgsz, imgsz), np.float32)
        # Warm up: the first client request must not pay for ONNX Runtime's lazy initialisation.
        self([np.zeros((1, 480, 640, 3), np.uint8)], [[(spec.DEFAULT_CONF, spec.DEFAULT_IOU, 10)]], [[False]])

    def __call__(
        self, batches: Sequence[np.ndarray], limits: Sequence[Limits], multi: Sequence[list[bool]]
    ) -> list[Outputs | InputError]:
        """One response's (BOXES, SCORES, CLASSES, NUM_DETECTIONS) per request; images checked by the caller.

        A request whose NMS exceeds the server's budget (`nms.NMS_PAIRS_PER_ANCHOR`) gets its
        InputError in its place, to be answered INVALID_ARG: the requests it was batched with
        are still served.
        """
        total = sum(b.shape[0] for b in batches)
        if total > spec.MAX_BATCH:  # the config's max_batch_size: cannot happen inside Triton
            raise ValueError(f"{total} images in one execute exceed the batch buffer ({spec.MAX_BATCH})")
        rows, start = [], 0
        for b in batches:
            rows.append(geometry.letterbox_into(b, self._canvas[start : start + b.shape[0]]))
            start += b.shape[0]
        pixels = geometry.to_pixels(self._canvas[:total], out=self._pixels[:total])
        raw = self.session.run([spec.RAW.name], {spec.PIXELS.name: pixels})[0]
        out, start = [], 0
        for b, lb, lim, ml in zip(batches, rows, limits, multi):
            n = b.shape[0]
            try:
                out.append(postprocess_batch(raw[start : start + n], lb, lim, ml))
            except InputError as e:
                out.append(e)
            start += n
        return out
