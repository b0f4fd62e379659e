"""Locust load test of a served ensemble over gRPC.

    locust -f perf/locustfile.py --headless -u 4 -r 2 -t 60s --triton-url 127.0.0.1:8001 [--triton-model yolov8n]

(`perf/locust_run.py` runs this with a server, reports and Triton's per-stage statistics.)

Each simulated user holds its own tritonclient gRPC client and sends real photos in turn with
the default thresholds, back to back (--think-time adds a pause). Every reply is decoded, so a
malformed answer counts as a failure like a gRPC error does, in Locust's own failure counting.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# gRPC's C core must cooperate with gevent's event loop before any channel exists; without this a
# blocking call freezes every simulated user in the process.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from yolo_triton import spec  # noqa: E402
from yolo_triton.client.detector import OUTPUTS, build_inputs, parse_outputs  # noqa: E402
from yolo_triton.perf import tools as perf_tools  # noqa: E402
from yolo_triton.pipeline.validation import InputError  # noqa: E402

_SAMPLES: list[perf_tools.Sample] = []


class _Client(grpcclient.InferenceServerClient):
    """tritonclient's gRPC client whose close() runs once: its __del__ closes again, and a second
    channel close during the interpreter's final garbage collection deadlocks under gevent."""

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


_CLIENTS: set[_Client] = set()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # noqa: ANN001 - locust's configargparse parser
    parser.add_argument("--triton-url", default="127.0.0.1:8001", env_var="YOLO_TRITON_URL",
                        help="HOST:PORT of tritonserver's gRPC endpoint")
    parser.add_argument("--triton-model", default=spec.ALIAS, env_var="YOLO_TRITON_MODEL", help="ensemble to load")
    parser.add_argument("--triton-images", default="", env_var="YOLO_TRITON_IMAGES",
                        help="comma-separated image files/folders (default: the sample photos)")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="per-request deadline, seconds")
    parser.add_argument("--think-time", type=float, default=0.0, help="pause between a user's requests, seconds")


@events.init.add_listener
def _load_images(environment: Environment, **_kw: object) -> None:
    """Decode the photos once per process, not per user."""
    opts = environment.parsed_options
    sources = [s for s in (opts.triton_images.split(",") if opts and opts.triton_images else []) if s]
    try:
        _SAMPLES[:] = perf_tools.sample_images(sources)
    except (perf_tools.PerfToolError, InputError) as e:
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
        return self.environment.parsed_options.think_time

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.model = opts.triton_model
        self.timeout = opts.request_timeout
        self.client = _Client(opts.triton_url)
        _CLIENTS.add(self.client)
        # per-user request tensors, built once: a load test measures the server, not numpy copies
        self.requests = [(s.name, build_inputs(s.image[None])) for s in _SAMPLES]
        self.turn = id(self) % len(self.requests)  # users start on different photos

    def on_stop(self) -> None:
        _CLIENTS.discard(self.client)
        self.client.close()

    @task
    def detect(self) -> None:
        image, inputs = self.requests[self.turn % len(self.requests)]
        self.turn += 1
        start = time.perf_counter()
        length, error = 0, None
        try:
            result = self.client.infer(self.model, inputs, outputs=OUTPUTS, client_timeout=self.timeout)
            length = result.get_response().ByteSize()
            parse_outputs(result)  # a reply that does not decode is a failure too
        except InferenceServerException as e:
            # its repr is empty; Locust groups failures by repr, so carry the status and message
            error = RuntimeError(f"{e.status() or 'error'}: {e.message() or e}")
        except Exception as e:  # noqa: BLE001 - every error is reported to Locust as a failure
            error = e
        self.environment.events.request.fire(
            request_type="grpc",
            name=self.model,
            response_time=(time.perf_counter() - start) * 1e3,
            response_length=length,
            exception=error,
            context={"image": image},
        )
