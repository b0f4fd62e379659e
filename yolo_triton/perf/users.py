"""Locust's simulated user for the served ensembles over gRPC, for the load test and the soak.

Imported by Locust only (perf/locustfile.py): it makes gRPC cooperate with gevent, which must
happen before any channel exists in the process. Each user holds its own tritonclient gRPC
client and sends real photos in turn with the default thresholds. Its pace is either back to
back with an optional pause (--think-time, the load test) or a constant rate per user
(--triton-rate, the soak). Every reply is decoded, so a malformed answer counts as a failure
like a gRPC error does; with --triton-classes it is also checked in full (replies.malformed).
With --triton-retries a request the server could not take (detector.retryable: UNAVAILABLE, as a
balancer answers for a replica lost with the request in flight) is sent again within its deadline,
and counts once, with the time of all its attempts.
"""

from __future__ import annotations

import sys
import time

# gRPC's C core must cooperate with gevent's event loop before any channel exists; without this a
# blocking call freezes every simulated user in the process.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, constant_throughput, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from yolo_triton import spec  # noqa: E402
from yolo_triton.client.detector import OUTPUTS, build_inputs, encoded_input, parse_outputs, retryable  # noqa: E402
from yolo_triton.perf import inputs  # noqa: E402
from yolo_triton.perf.errors import PerfToolError  # noqa: E402
from yolo_triton.perf.replies import GrpcError, Malformed, malformed  # noqa: E402

_SAMPLES: list[inputs.Sample] = []


class _Client(grpcclient.InferenceServerClient):
    """tritonclient's gRPC client whose close() runs once: its __del__ closes again, and a second
    channel close during the interpreter's final garbage collection deadlocks under gevent."""

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


_CLIENTS: set[_Client] = set()


# The user's options, on Locust's command line: option, type, default, environment variable, help.
OPTIONS = (
    ("--triton-url", str, "127.0.0.1:8001", "YOLO_TRITON_URL", "HOST:PORT of tritonserver's gRPC endpoint"),
    ("--triton-model", str, spec.ALIAS, "YOLO_TRITON_MODEL", "ensemble to load"),
    ("--triton-images", str, "", "YOLO_TRITON_IMAGES", "comma-separated image files/folders (default: the samples)"),
    ("--request-timeout", float, 60.0, None, "per-request deadline, seconds"),
    ("--think-time", float, 0.0, None, "pause between a user's requests, seconds"),
    ("--triton-rate", float, 0.0, None,
     "requests/s per user, paced by constant_throughput (0: back to back, --think-time)"),
    ("--triton-classes", int, 0, None, "check every reply in full, class ids below this (0: decode only)"),
    ("--triton-encoded", int, 0, "YOLO_TRITON_ENCODED",
     "1: send each photo's own file bytes (IMAGE_BYTES, decoded on the server), as a remote client does"),
    ("--triton-retries", int, 0, None,
     "retries of a request the server could not take (UNAVAILABLE: a replica lost behind a balancer), "
     "within --request-timeout"),
)
RETRY_BACKOFF_S = (0.05, 1.0)  # first pause before a retry, and the cap of its doubling


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # noqa: ANN001 - locust's configargparse parser
    for flag, kind, default, env_var, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, env_var=env_var, help=text)


@events.init.add_listener
def _load_images(environment: Environment, **_kw: object) -> None:
    """Decode the photos once per process, not per user."""
    opts = environment.parsed_options
    sources = [s for s in (opts.triton_images.split(",") if opts and opts.triton_images else []) if s]
    try:
        _SAMPLES[:] = inputs.photos(sources)
    except PerfToolError as e:
        sys.exit(f"locustfile: {e}")  # SystemExit passes through Locust's event hooks and ends the run


@events.quitting.add_listener
def _close_clients(**_kw: object) -> None:
    """Close every channel while gevent's loop still runs: a channel left for the interpreter's
    final garbage collection can deadlock inside gRPC and keep the process from exiting (users
    killed at the end of the run never reach on_stop)."""
    while _CLIENTS:
        _CLIENTS.pop().close()


class TritonGrpcUser(User):
    """One client connection sending photos in turn, each request timed and reported to Locust."""

    def wait_time(self) -> float:
        opts = self.environment.parsed_options
        return constant_throughput(opts.triton_rate)(self) if opts.triton_rate > 0 else opts.think_time

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.model = opts.triton_model
        self.timeout = opts.request_timeout
        self.num_classes = opts.triton_classes
        self.retries = opts.triton_retries
        self.client = _Client(opts.triton_url)
        _CLIENTS.add(self.client)
        # per-user request tensors, built once: a load test measures the server, not numpy copies
        self.requests = [(s.name, [encoded_input([s.data])] if opts.triton_encoded else build_inputs(s.image[None]))
                         for s in _SAMPLES]
        self.sizes = {s.name: s.image.shape[:2] for s in _SAMPLES}
        self.turn = id(self) % len(self.requests)  # users start on different photos

    def on_stop(self) -> None:
        _CLIENTS.discard(self.client)
        self.client.close()

    def _check(self, result: grpcclient.InferResult, image: str) -> None:
        """Raise when the reply is not well-formed detections (a failure, like a gRPC error)."""
        if not self.num_classes:
            parse_outputs(result)
            return
        problem = malformed({t.name: result.as_numpy(t.name) for t in spec.ENSEMBLE_OUTPUTS},
                            *self.sizes[image], self.num_classes)
        if problem:
            raise Malformed(f"{image}: {problem}")

    @task
    def detect(self) -> None:
        image, request = self.requests[self.turn % len(self.requests)]
        self.turn += 1
        start = time.perf_counter()
        length, error, retried = 0, None, 0
        while True:
            try:
                result = self._infer(request, start)
                length = result.get_response().ByteSize()
                self._check(result, image)
            except InferenceServerException as e:
                if self._retry(e, start, retried):
                    retried += 1
                    continue
                # its repr is empty; Locust groups failures by repr, so carry the status and message
                error = GrpcError(f"{(e.status() or 'UNKNOWN').removeprefix('StatusCode.')}: {e.message() or e}")
            except Exception as e:  # noqa: BLE001 - every error is reported to Locust as a failure
                error = e
            break
        self.environment.events.request.fire(
            request_type="grpc",
            name=self.model,
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=length,
            exception=error,
            context={"image": image, "retries": retried},
        )

    def _infer(self, request: list[grpcclient.InferInput], start: float) -> grpcclient.InferResult:
        """One attempt, with what is left of the request's deadline."""
        left = self.timeout - (time.perf_counter() - start)
        return self.client.infer(self.model, request, outputs=OUTPUTS, client_timeout=max(left, 1e-3))

    def _retry(self, e: InferenceServerException, start: float, retried: int) -> bool:
        """Whether to try again (detector.retryable, as DetectorClient does), after a capped pause."""
        pause = min(RETRY_BACKOFF_S[0] * 2**retried, RETRY_BACKOFF_S[1])
        left = self.timeout - (time.perf_counter() - start)
        if retried >= self.retries or left <= pause or not retryable(str(e.status()), e.message() or str(e)):
            return False
        time.sleep(pause)  # gevent's sleep under Locust: the other users go on
        return True
