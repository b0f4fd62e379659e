"""A small gRPC client for the served ensembles: images in, detections out.

Every call has one deadline (`timeout_s`) that covers all its attempts. Transient server states
are retried with capped exponential backoff inside that deadline: UNAVAILABLE (server starting
or stopping, connection refused), a python stub that died ("is not healthy", until the
launcher's watchdog has reloaded its model) and a model between versions ("no available
versions", during a reload or a drain). Anything else is raised at once with the server's
message. Images and thresholds are checked here first, so bad input never leaves the client.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from yolo_triton import spec
from yolo_triton.pipeline import encoded
from yolo_triton.pipeline.nms import Detections
from yolo_triton.pipeline.postprocess import unpad
from yolo_triton.pipeline.validation import check_images, check_thresholds
from yolo_triton.serve import keys

_log = logging.getLogger(__name__)


def retryable(status: str | None, message: str) -> bool:
    """Whether waiting can fix this error (the server's state), as opposed to the request."""
    if status == "StatusCode.UNAVAILABLE":
        return "restricted" not in message  # a missing API key does not appear by waiting
    if status == "StatusCode.INTERNAL":
        return "is not healthy" in message  # python stub died; the watchdog reloads its model
    if status == "StatusCode.NOT_FOUND":
        return "no available versions" in message  # model reloading, or unloaded by a drain
    return False


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel options, plus a short reconnect backoff.

    gRPC waits up to two minutes between reconnect attempts after a refused connection, and a
    call made meanwhile fails at once: a server that came back would stay unreachable for
    longer than any of our deadlines."""
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class ServerError(RuntimeError):
    """The server answered with an error (or none in time); `status` is the gRPC status name."""

    def __init__(self, message: str, status: str | None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Result:
    detections: Detections
    latency_ms: float


def build_inputs(
    images: np.ndarray,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    multi_label: bool | None = None,
    image_input: grpcclient.InferInput | None = None,
) -> list[grpcclient.InferInput]:
    """The request tensors for one batch of same-size images (B, H, W, 3).

    `image_input` replaces the inline IMAGE tensor (e.g. one that points at shared memory)."""
    if image_input is None:
        image_input = grpcclient.InferInput(spec.IMAGE.name, list(images.shape), spec.IMAGE.wire_dtype)
        image_input.set_data_from_numpy(np.ascontiguousarray(images))
    return [image_input, *option_inputs(images.shape[0], conf, iou, max_det, multi_label)]


def option_inputs(n: int, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                  multi_label: bool | None = None) -> list[grpcclient.InferInput]:
    """The options a request sets (one value per image); those left None take the server's defaults."""
    inputs = []
    for t, value in zip(spec.OPTIONS, (conf, iou, max_det, multi_label)):
        if value is not None:
            inp = grpcclient.InferInput(t.name, [n, 1], t.wire_dtype)
            inp.set_data_from_numpy(np.full((n, 1), value, dtype=t.np_dtype))
            inputs.append(inp)
    return inputs


def encoded_input(files: list[bytes]) -> grpcclient.InferInput:
    """IMAGE_BYTES for encoded files (any sizes), each checked as the server checks it first, so a
    file the server would refuse is refused here, naming it by its index."""
    encoded.read_headers(files)
    inp = grpcclient.InferInput(spec.IMAGE_BYTES.name, [len(files), 1], spec.IMAGE_BYTES.wire_dtype)
    inp.set_data_from_numpy(np.array([[bytes(f)] for f in files], dtype=object).reshape(len(files), 1))
    return inp


OUTPUTS = [grpcclient.InferRequestedOutput(t.name) for t in spec.ENSEMBLE_OUTPUTS]


def parse_outputs(result: grpcclient.InferResult) -> list[Detections]:
    return unpad(*(result.as_numpy(t.name) for t in spec.ENSEMBLE_OUTPUTS))


def _shm_module():  # noqa: ANN202 - tritonclient.utils.shared_memory
    """Imported on first use: it pulls in pkg_resources, which warns about its own deprecation."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import tritonclient.utils.shared_memory as shm
    return shm


class ShmRegion:
    """A system shared-memory region registered with the server, reused for every request."""

    def __init__(self, name: str, handle: object, size: int, headers: dict[str, str] | None = None) -> None:
        self.name, self.handle, self.size, self.headers = name, handle, size, headers
        # A writable view of the mapping, so images are copied in once: tritonclient's
        # set_shared_memory_region flattens (copies) the array before its own memmove, a second
        # pass over 2.6 MB for every 1080x810 photo.
        self.view: np.ndarray | None = _shm_module().get_contents_as_numpy(handle, np.uint8, [size])

    @staticmethod
    def create(client: grpcclient.InferenceServerClient, size: int, headers: dict[str, str] | None) -> ShmRegion:
        """A new region of `size` bytes, registered with the server. Registering is an admin call:
        `headers` carry the server's admin key (yolo_triton.keys.headers_for)."""
        import os
        import uuid

        shm = _shm_module()
        # Unique per region: an object id is reused once freed, and a region left registered under
        # that name (a client that was never closed) made the next registration fail.
        name = f"yolo_triton_{os.getpid()}_{uuid.uuid4().hex[:12]}_{size}"
        handle = shm.create_shared_memory_region(name, f"/{name}", size)
        try:
            client.register_system_shared_memory(name, f"/{name}", size, headers=headers)
        except InferenceServerException as e:
            shm.destroy_shared_memory_region(handle)
            if "restricted" in str(e.message()):
                raise ServerError(
                    "the server refused to register shared memory without its admin key: run the client on the "
                    "server's host as the user who started it (the key is read from the launch's key file), or "
                    "set TRITON_API_KEY; or send the pixels in the request instead (shared_memory=False)",
                    e.status(),
                ) from None
            raise
        return ShmRegion(name, handle, size, headers)

    def input(self, images: np.ndarray) -> grpcclient.InferInput:
        if self.view is None:
            raise ValueError(f"shared-memory region {self.name} was released")
        if images.nbytes > self.size:
            raise ValueError(f"{images.nbytes} bytes of images do not fit the {self.size}-byte shared-memory region")
        np.copyto(self.view[: images.nbytes].reshape(images.shape), images, casting="no")
        inp = grpcclient.InferInput(spec.IMAGE.name, list(images.shape), spec.IMAGE.wire_dtype)
        inp.set_shared_memory(self.name, images.nbytes)
        return inp

    def release(self, client: grpcclient.InferenceServerClient, wait_s: float = 5.0) -> None:
        """Unregister the region, then unmap and unlink it.

        Triton refuses to unregister a region that a request still holds ("it is currently in
        use"), and a request holds it for a moment after its answer has reached the client: a
        client closed right after its last answer had its region refused (seen once in CI), and
        the server kept it registered and mapped for good. That refusal is retried for up to
        `wait_s`. A server that is gone needs nothing unregistered; any other refusal is logged."""
        shm = _shm_module()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                client.unregister_system_shared_memory(self.name, headers=self.headers)
                break
            except InferenceServerException as e:
                message = str(e.message())
                if "in use" in message and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                if e.status() != "StatusCode.UNAVAILABLE":
                    _log.warning("shared-memory region %s stays registered with the server: %s", self.name, message)
                break
            except Exception as e:  # noqa: BLE001 - a closed channel, say: the mapping is still ours to free
                _log.warning("shared-memory region %s: unregistering failed: %s", self.name, e)
                break
        self.view = None  # unmapped next: a write through it would crash the process
        shm.destroy_shared_memory_region(self.handle)


class DetectorClient:
    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        model: str = spec.ALIAS,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 2.0,
        shared_memory: bool = False,
        api_key: str | None = None,
    ) -> None:
        """`shared_memory`: hand images over through a system shared-memory region instead of the
        gRPC message (client and server on one host). A 1080x810 photo is 2.6 MB of pixels, and
        moving it through gRPC costs more than pre- and postprocessing together (bench-cpu).
        Registering the region needs the server's admin key: `api_key`, else TRITON_API_KEY, else
        the key file of a server this user started on this host (yolo_triton.keys)."""
        self.url, self.model = url, model
        self.headers = keys.key_headers(api_key) if api_key else keys.headers_for(url)
        self._shm: ShmRegion | None = None
        self.shared_memory = shared_memory
        self.timeout_s, self.retries, self.backoff_s, self.max_backoff_s = timeout_s, retries, backoff_s, max_backoff_s
        self.client = grpcclient.InferenceServerClient(url, channel_args=_channel_args())
        self._names: tuple[str, ...] | None = None

    def close(self) -> None:
        if self._shm is not None:
            self._shm.release(self.client)
            self._shm = None
        self.client.close()

    def __enter__(self) -> DetectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - thin retry wrapper
        """fn(*args, client_timeout=what is left of the deadline), retried while retryable()."""
        start = time.monotonic()
        deadline = start + self.timeout_s
        delay = self.backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, client_timeout=max(deadline - time.monotonic(), 1e-3), **kwargs)
            except InferenceServerException as e:
                status, message = e.status(), e.message() or str(e)
                left = deadline - time.monotonic()
                if retryable(status, message) and attempt <= self.retries and left > delay:
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
                    continue
                raise ServerError(self._describe(status, message, attempt, time.monotonic() - start), status) from None

    def _describe(self, status: str | None, message: str, attempts: int, elapsed: float) -> str:
        code = (status or "").removeprefix("StatusCode.") or "error"
        if code == "DEADLINE_EXCEEDED":
            return (f"{self.model} at {self.url}: no answer within the {self.timeout_s:g} s deadline "
                    f"({code}); raise timeout_s for large batches or a busy server")
        if attempts > 1:
            return f"{message} ({code}; gave up after {attempts} attempts in {elapsed:.1f} s)"
        return f"{message} ({code})"

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, from the served ensemble's config (they come from the checkpoint)."""
        if self._names is None:
            cfg = self._call(self.client.get_model_config, self.model, as_json=True)["config"]
            self._names = tuple(json.loads(cfg["parameters"]["names"]["string_value"]))
        return self._names

    def ready_models(self) -> list[str]:
        """The models of this project the server has ready, asked through the health API (open to
        anyone; the repository index needs the admin key)."""
        names = [spec.ALIAS, *(v.ensemble for v in spec.VARIANTS), spec.NETWORK_ALIAS]
        return [m for m in names if self._call(self.client.is_model_ready, m)]

    def infer(self, images: np.ndarray, conf: float | None = None, iou: float | None = None,
              max_det: int | None = None, multi_label: bool | None = None) -> tuple[list[Detections], float]:
        """One request for a batch of same-size images; detections per image and latency (ms)."""
        check_images(images)
        check_thresholds(images.shape[0], conf, iou, max_det)
        start = time.perf_counter()
        image_input = None
        if self.shared_memory:
            if self._shm is None or self._shm.size < images.nbytes:
                if self._shm is not None:
                    self._shm.release(self.client)
                self._shm = ShmRegion.create(self.client, max(images.nbytes, 4 << 20), self.headers)
            image_input = self._shm.input(images)
        inputs = build_inputs(images, conf, iou, max_det, multi_label, image_input)
        result = self._call(self.client.infer, self.model, inputs, outputs=OUTPUTS)
        return parse_outputs(result), (time.perf_counter() - start) * 1e3

    def infer_encoded(self, files: list[bytes], conf: float | None = None, iou: float | None = None,
                      max_det: int | None = None, multi_label: bool | None = None
                      ) -> tuple[list[Detections], float]:
        """One request for encoded JPEG/PNG/WebP files, sent as they are and decoded on the server;
        detections per file (in its decoded, EXIF-oriented pixels) and latency (ms)."""
        if not 1 <= len(files) <= spec.MAX_BATCH:
            raise encoded.InputError(f"{spec.IMAGE_BYTES.name}: {len(files)} files; send 1 to {spec.MAX_BATCH}")
        check_thresholds(len(files), conf, iou, max_det)
        start = time.perf_counter()
        inputs = [encoded_input(files), *option_inputs(len(files), conf, iou, max_det, multi_label)]
        result = self._call(self.client.infer, self.model, inputs, outputs=OUTPUTS)
        return parse_outputs(result), (time.perf_counter() - start) * 1e3

    def detect_encoded(self, data: bytes, conf: float | None = None, iou: float | None = None,
                       max_det: int | None = None, multi_label: bool | None = None) -> Result:
        dets, ms = self.infer_encoded([data], conf, iou, max_det, multi_label)
        return Result(dets[0], ms)

    def detect(self, image: np.ndarray, conf: float | None = None, iou: float | None = None,
               max_det: int | None = None, multi_label: bool | None = None) -> Result:
        dets, ms = self.infer(image[None], conf, iou, max_det, multi_label)
        return Result(dets[0], ms)

    def model_stats(self, model: str | None = None) -> dict:
        return self._call(self.client.get_inference_statistics, model or "", as_json=True)


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
