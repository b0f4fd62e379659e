"""A small gRPC client for the served ensembles: images in, detections out.

Every call carries a deadline, and UNAVAILABLE (server restarting, stub respawning) is retried
with exponential backoff; any other error is raised at once with the server's message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from yolo_triton import spec
from yolo_triton.nms import Detections
from yolo_triton.postprocess import unpad
from yolo_triton.validation import check_images

RETRY_STATUSES = ("StatusCode.UNAVAILABLE",)


class ServerError(RuntimeError):
    """The server answered with an error; `status` is the gRPC status name."""

    def __init__(self, message: str, status: str | None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Result:
    detections: Detections
    latency_ms: float


def build_inputs(
    images: np.ndarray, conf: float | None = None, iou: float | None = None, max_det: int | None = None
) -> list[grpcclient.InferInput]:
    """The request tensors for one batch of same-size images (B, H, W, 3)."""
    n = images.shape[0]
    tensors = [(spec.IMAGE, images)]
    for t, value in ((spec.CONF_THRESHOLD, conf), (spec.IOU_THRESHOLD, iou), (spec.MAX_DETECTIONS, max_det)):
        if value is not None:
            tensors.append((t, np.full((n, 1), value, dtype=t.np_dtype)))
    inputs = []
    for t, array in tensors:
        inp = grpcclient.InferInput(t.name, list(array.shape), t.wire_dtype)
        inp.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(inp)
    return inputs


OUTPUTS = [grpcclient.InferRequestedOutput(t.name) for t in spec.ENSEMBLE_OUTPUTS]


def parse_outputs(result: grpcclient.InferResult) -> list[Detections]:
    return unpad(*(result.as_numpy(t.name) for t in spec.ENSEMBLE_OUTPUTS))


class DetectorClient:
    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model: str = spec.ALIAS,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.25,
    ) -> None:
        self.url, self.model = url, model
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.client = grpcclient.InferenceServerClient(url)
        self._names: tuple[str, ...] | None = None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DetectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - thin retry wrapper
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except InferenceServerException as e:
                status = e.status()
                if status in RETRY_STATUSES and attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise ServerError(e.message() or str(e), status) from None
        raise AssertionError("unreachable")

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, from the served ensemble's config (they come from the checkpoint)."""
        if self._names is None:
            cfg = self._call(
                self.client.get_model_config, self.model, as_json=True, client_timeout=self.timeout_s
            )["config"]
            self._names = tuple(json.loads(cfg["parameters"]["names"]["string_value"]))
        return self._names

    def infer(
        self,
        images: np.ndarray,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
    ) -> tuple[list[Detections], float]:
        """One request for a batch of same-size images; detections per image and latency (ms)."""
        check_images(images)
        inputs = build_inputs(images, conf, iou, max_det)
        start = time.perf_counter()
        result = self._call(
            self.client.infer, self.model, inputs, outputs=OUTPUTS, client_timeout=self.timeout_s
        )
        return parse_outputs(result), (time.perf_counter() - start) * 1e3

    def detect(
        self,
        image: np.ndarray,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
    ) -> Result:
        dets, ms = self.infer(image[None], conf, iou, max_det)
        return Result(dets[0], ms)

    def detect_many(self, images: Sequence[np.ndarray], **thresholds: float | int | None) -> list[Result]:
        """Several images; those of one size go in one request (offline throughput)."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(im.shape, []).append(i)
        out: list[Result | None] = [None] * len(images)
        for idx in by_shape.values():
            for chunk in (idx[i : i + spec.MAX_BATCH] for i in range(0, len(idx), spec.MAX_BATCH)):
                dets, ms = self.infer(np.stack([images[i] for i in chunk]), **thresholds)
                for i, d in zip(chunk, dets):
                    out[i] = Result(d, ms)
        return [r for r in out if r is not None]

    def model_stats(self, model: str | None = None) -> dict:
        return self._call(
            self.client.get_inference_statistics, model or "", as_json=True, client_timeout=self.timeout_s
        )


def detections_json(det: Detections, names: tuple[str, ...]) -> list[dict]:
    return [
        {
            "box": [round(float(v), 2) for v in box],
            "score": round(float(s), 5),
            "class_id": int(k),
            "class_name": names[k] if 0 <= k < len(names) else str(int(k)),
        }
        for box, s, k in zip(det.boxes, det.scores, det.classes)
    ]
