"""Hostile clients against the real server started as `make serve` starts it (loopback, defaults).

Each attack is sent as an attacker would (raw gRPC or raw HTTP, none of the client's own checks),
and each test asserts that it is refused or bounded, that no python stub died, and that right
after it the server is live and a good request returns exactly what it returned before. The
NMS blow-up is in test_hostile_nms.py, the HTTP body attacks in test_http_front.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from conftest import sample_images
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.serve import keys
from yolo_triton.serve.watchdog import STUB_NAME

ENSEMBLES = (spec.ALIAS, spec.variant("ort").ensemble, spec.variant("ort_fused").ensemble)


@pytest.fixture(scope="module")
def reference(server) -> tuple[np.ndarray, object]:
    image = sample_images()["bus.jpg"] if "bus.jpg" in sample_images() else next(iter(sample_images().values()))
    with DetectorClient(server.url, timeout_s=60) as c:
        return image, c.detect(image).detections


def stubs(server) -> dict[str, int]:
    """model -> pid of its live python stub."""
    out = {}
    for child in psutil.Process(server.proc.pid).children():
        try:
            args = child.cmdline()
        except psutil.Error:
            continue
        if args and Path(args[0]).name == STUB_NAME:
            out[Path(args[1]).parents[1].name] = child.pid
    return out


def assert_unharmed(server, reference, stubs_before: dict[str, int]) -> None:
    """Live, the same stubs as before (none died and was replaced), and the same answer."""
    raw = grpcclient.InferenceServerClient(server.url)
    try:
        assert raw.is_server_live() and raw.is_server_ready()
    finally:
        raw.close()
    assert stubs(server) == stubs_before, "a python stub died (the watchdog replaced it)"
    image, expected = reference
    with DetectorClient(server.url, timeout_s=60, retries=0) as c:
        got = c.detect(image).detections
    np.testing.assert_array_equal(got.classes, expected.classes)
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)


def raw_infer(url: str, model: str, shape: list[int], payload: bytes) -> grpc.RpcError | None:
    """A ModelInferRequest built by hand: shapes no tritonclient would let through."""
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = spec.IMAGE.name, spec.IMAGE.wire_dtype
        tensor.shape.extend(shape)
        request.raw_input_contents.append(payload)
        try:
            stub.ModelInfer(request, timeout=60)
        except grpc.RpcError as e:
            return e
    return None


CRAFTED = {
    "negative-dims": ([1, -2, -2, 3], "dimension -2 is negative"),
    "overflowing-dims": ([1, 4611686018427387905, 4, 3], "more elements than this server accepts"),
    "negative-batch": ([-2, 1, -2, 3], "dimension -2 is negative"),
    "huge-batch-overflow": ([4611686018427387905, 1, 1, 12], "more elements than this server accepts"),
}


@pytest.mark.parametrize("model", ENSEMBLES)
@pytest.mark.parametrize("case", list(CRAFTED), ids=list(CRAFTED))
def test_crafted_shapes_with_a_tiny_payload_are_refused_before_any_stub_sees_them(server, reference, model, case):
    """Attack 1. Before: the stub died building the NumPy array ("Stub process 'preprocess_0_0' is not
    healthy"), before any model code ran; sent every 2 s, it kept the service down."""
    before = stubs(server)
    shape, words = CRAFTED[case]
    for _ in range(3):  # repeated, as the attack was
        err = raw_infer(server.url, model, shape, b"\0" * 12)
        assert err is not None, "a crafted shape was served"
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert words in err.details() and spec.IMAGE.name in err.details(), err.details()
    assert_unharmed(server, reference, before)


def test_the_python_backends_own_region_cannot_be_registered_without_the_key(server, reference):
    """Attack 4. Its name is in `ps` (the stub's arguments); registered through the shared-memory API
    with an output written into it, it segfaulted tritonserver. The shared-memory API now needs the
    admin key, on loopback too."""
    before = stubs(server)
    stub = psutil.Process(next(iter(before.values())))
    region = stub.cmdline()[2]
    assert (Path("/dev/shm") / region).exists(), region
    raw = grpcclient.InferenceServerClient(server.url)
    try:
        with pytest.raises(InferenceServerException) as err:
            raw.register_system_shared_memory("backend", f"/{region}", 1 << 20)
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "restricted" in err.value.message()
        with pytest.raises(InferenceServerException):  # so nothing was registered to write into
            raw.get_system_shared_memory_status()
        assert not raw.get_system_shared_memory_status(headers=server.headers, as_json=True).get("regions")
    finally:
        raw.close()
    assert_unharmed(server, reference, before)


def test_loading_a_model_with_code_is_refused_without_the_key(server, reference, tmp_path):
    """Attack 5 over gRPC. The load API takes model files in the request: whoever may call it runs code
    as the server's user. Refused without the key, and the code never ran."""
    before = stubs(server)
    marker = tmp_path / "pwned"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    config = json.dumps({"backend": "python", "max_batch_size": 0,
                         "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]})
    raw = grpcclient.InferenceServerClient(server.url)
    try:
        with pytest.raises(InferenceServerException) as err:
            raw.load_model("x", config=config, files={"file:1/model.py": code.encode()})
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "restricted" in err.value.message()
        assert not raw.is_model_ready("x")
    finally:
        raw.close()
    assert not marker.exists(), "the uploaded model code ran"
    assert_unharmed(server, reference, before)


RESTRICTED = {
    "repository-index": lambda c, h: c.get_model_repository_index(headers=h),
    "unload": lambda c, h: c.unload_model(spec.variant("ort").ensemble, headers=h),
    "load": lambda c, h: c.load_model(spec.variant("ort").ensemble, headers=h),
    "shm-status": lambda c, h: c.get_system_shared_memory_status(headers=h),
    "cuda-shm-status": lambda c, h: c.get_cuda_shared_memory_status(headers=h),
    "log-update": lambda c, h: c.update_log_settings({"log_verbose_level": 1}, headers=h),
    "trace-update": lambda c, h: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}, headers=h),
}


@pytest.mark.parametrize("api", list(RESTRICTED), ids=list(RESTRICTED))
def test_loopback_is_not_a_trust_boundary(server, api):
    """The default server (127.0.0.1) answers the admin APIs only to holders of its key."""
    raw = grpcclient.InferenceServerClient(server.url)
    try:
        with pytest.raises(InferenceServerException) as err:
            RESTRICTED[api](raw, None)
        assert err.value.status() == "StatusCode.UNAVAILABLE" and "restricted" in err.value.message()
        assert raw.is_model_ready(spec.ALIAS) and raw.is_model_ready(spec.variant("ort").ensemble)
    finally:
        raw.close()


def test_the_key_is_in_a_private_file_and_nowhere_in_arguments_environment_or_logs(server):
    """Generated per launch (TRITON_API_KEY unset), kept 0600 in a 0700 folder; tritonserver is given
    the file, its stubs get nothing."""
    path = keys.key_file(server.ports.grpc)
    assert path.read_text().strip() == server.api_key and len(server.api_key) >= 32
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert keys.read_key(server.url) == server.api_key  # what the project's own tools use
    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    for p in procs:
        assert server.api_key not in " ".join(p.cmdline()), p.name()
        assert server.api_key not in "\n".join(f"{k}={v}" for k, v in p.environ().items()), p.name()
    assert keys.secret_token(path) in " ".join(procs[0].cmdline())
    assert server.log is not None and server.api_key not in server.log.read_text(errors="replace")


def test_a_key_holder_still_uses_shared_memory(server, reference):
    """The shared-memory path of local clients keeps working: DetectorClient reads the key file."""
    image, expected = reference
    with DetectorClient(server.url, timeout_s=60, shared_memory=True) as c:
        got = c.detect(image).detections
    np.testing.assert_array_equal(got.classes, expected.classes)
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)


def test_shared_memory_without_the_key_names_the_fix(server, monkeypatch, tmp_path):
    monkeypatch.setenv("YOLO_TRITON_STATE_DIR", str(tmp_path))  # another user's view: no key file
    monkeypatch.delenv("TRITON_API_KEY", raising=False)
    image = next(iter(sample_images().values()))
    from yolo_triton.client.detector import ServerError

    with DetectorClient(server.url, timeout_s=30, shared_memory=True) as c, pytest.raises(ServerError) as err:
        c.detect(image)
    assert "admin key" in str(err.value) and "TRITON_API_KEY" in str(err.value)
    assert not os.listdir(tmp_path)
