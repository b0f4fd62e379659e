"""The pipeline every variant runs: letterbox -> network -> decode/NMS -> map back.

A request carries a batch of same-size images and its options; one execute() serves several
requests. Each implementation offers the stages as objects of their own, which the staged
ensemble's three python models call one each (preprocess: letterbox; detector: network;
postprocess: decode, NMS and map back), and a pipeline that calls all three in one go for the
fused model. CPU: `pipeline.cpu` (NumPy + ONNX Runtime); GPU: `pipeline.gpu` (torch, CUDA graphs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from yolo_triton.pipeline.validation import InputError

Limits = list[tuple[float, float, int]]  # per image of a request: (conf, iou, max_det)
Outputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # one request's BOXES, SCORES, CLASSES, NUM_DETECTIONS
Watch = Callable[[str], AbstractContextManager[None]]  # backend.metrics.Stopwatch: times a stage


class Pipeline(Protocol):
    """All stages for the requests of one execute(); a request refused on the way (e.g. over the
    NMS budget) gets its InputError in place of its outputs, the others are served."""

    def __call__(
        self, batches: Sequence[Any], limits: Sequence[Limits], multi: Sequence[list[bool]], watch: Watch | None = None
    ) -> list[Outputs | InputError]: ...
