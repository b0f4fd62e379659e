"""Secure defaults against real servers: local binding by default; on every address, the
model-repository, shared-memory, logging and trace APIs need the key while inference stays open;
HTTP only on request, behind nginx. All traffic goes to 127.0.0.1, also when the server listens
on 0.0.0.0."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT, sample_images
from tritonclient.utils import InferenceServerException

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient, retryable
from yolo_triton.serve import keys
from yolo_triton.serve.keys import API_KEY_HEADER, key_headers
from yolo_triton.serve.launcher import LaunchError, Server

KEY = secrets.token_urlsafe(24)


def listening(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def test_default_server_listens_on_loopback_only(server):
    """The session server is started like `make serve` (no host given)."""
    addresses = listening(server.proc.pid)
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses


def test_make_serve_defaults_to_loopback():
    text = (ROOT / "Makefile").read_text()
    assert "HOST ?= 127.0.0.1" in text


def test_weak_keys_are_refused(repo):
    for weak in ("short", "has:colon-and-is-long-enough", "has,comma-and-is-long-enough"):
        with pytest.raises(LaunchError, match="at least 16 characters"):
            Server(repo, host="0.0.0.0", api_key=weak)


def test_launcher_refuses_a_weak_key(repo):
    env = {**os.environ, "TRITON_API_KEY": "too-short"}
    out = subprocess.run([sys.executable, "-m", "yolo_triton.serve.cli", "--repo", str(repo), "--host", "0.0.0.0"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 2 and "TRITON_API_KEY" in out.stderr, out.stderr


def test_http_is_off_by_default(server):
    """Triton's HTTP endpoint has no size, nesting or decompression limits: it is not opened unless
    asked for, and then only behind nginx (test_http_front.py)."""
    assert "--allow-http=false" in server.cmd
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.ports.http}/v2/health/ready", timeout=5)


@pytest.fixture(scope="module")
def exposed(repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("exposed") / "tritonserver.log"
    with Server(repo, host="0.0.0.0", api_key=KEY, log=log, http=True) as s:
        assert s.url.startswith("127.0.0.1:")
        assert keys.read_key(s.url) == KEY  # a key given by TRITON_API_KEY is the one in the file
        yield s


@pytest.fixture()
def grpc(exposed):
    c = grpcclient.InferenceServerClient(exposed.url)
    yield c
    c.close()


RESTRICTED = {
    "repository-index": lambda c, h: c.get_model_repository_index(headers=h),
    "unload": lambda c, h: c.unload_model(spec.variant("ort").ensemble, headers=h),
    "load": lambda c, h: c.load_model(spec.variant("ort").ensemble, headers=h),
    "shm-status": lambda c, h: c.get_system_shared_memory_status(headers=h),
    "shm-register": lambda c, h: c.register_system_shared_memory("x", "/yolo_triton_test", 64, headers=h),
    "log-settings": lambda c, h: c.get_log_settings(headers=h),
    "log-update": lambda c, h: c.update_log_settings({"log_verbose_level": 1}, headers=h),
    "trace-settings": lambda c, h: c.get_trace_settings(headers=h),
}


def test_exposed_server_listens_on_all_interfaces_but_http_only_through_nginx(exposed):
    addresses = listening(exposed.proc.pid)
    assert addresses & {"0.0.0.0", "::"}
    inner = {c.laddr for c in psutil.Process(exposed.proc.pid).net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == exposed.inner_http_port}
    assert inner and {a.ip for a in inner} <= {"127.0.0.1"}, inner  # Triton's own HTTP: loopback, proxy key


@pytest.mark.parametrize("api", list(RESTRICTED), ids=list(RESTRICTED))
@pytest.mark.parametrize("headers", [None, {"triton-grpc-protocol-x-api-key": "wrong-key-of-enough-length"},
                                     {API_KEY_HEADER: KEY}], ids=["no-key", "wrong-key", "http-style-header"])
def test_restricted_grpc_apis_refuse_without_the_key(grpc, exposed, api, headers):
    with pytest.raises(InferenceServerException) as err:
        RESTRICTED[api](grpc, headers)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "restricted" in err.value.message() and "x-api-key" in err.value.message()
    assert not retryable(err.value.status(), err.value.message()), "DetectorClient would retry a missing key"
    assert grpc.is_model_ready(spec.ALIAS)  # nothing was unloaded


def test_restricted_grpc_apis_work_with_the_key(grpc, exposed):
    headers = key_headers(KEY)
    assert headers == {"triton-grpc-protocol-x-api-key": KEY}
    names = {m.name for m in grpc.get_model_repository_index(headers=headers).models}
    assert spec.ALIAS in names
    ensemble = spec.variant("ort").ensemble
    grpc.unload_model(ensemble, headers=headers)
    assert not grpc.is_model_ready(ensemble)
    grpc.load_model(ensemble, headers=headers)
    assert grpc.is_model_ready(ensemble)
    assert grpc.get_log_settings(headers=headers).settings
    grpc.get_system_shared_memory_status(headers=headers)


def test_inference_and_health_stay_open_without_the_key(exposed):
    image = next(iter(sample_images().values()))
    with DetectorClient(exposed.url, timeout_s=60) as c:
        det = c.detect(image).detections
        assert det.boxes.shape == (len(det.scores), 4)
        assert c.names and c.model_stats(spec.ALIAS)["model_stats"]
    raw = grpcclient.InferenceServerClient(exposed.url)
    try:
        assert raw.is_server_live() and raw.is_server_ready() and raw.get_server_metadata().version
    finally:
        raw.close()


def http(exposed, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
    url = f"http://127.0.0.1:{exposed.ports.http}{path}"
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("path, method", [
    ("/v2/repository/index", "POST"),
    (f"/v2/repository/models/{spec.ALIAS}/unload", "POST"),
    (f"/v2/repository/models/{spec.ALIAS}/load", "POST"),
    ("/v2/systemsharedmemory/status", "GET"),
    ("/v2/logging", "GET"),
    ("/v2/trace/setting", "GET"),
], ids=["index", "unload", "load", "shm-status", "logging", "trace"])
def test_restricted_http_apis_refuse_without_the_key(exposed, grpc, path, method):
    status, body = http(exposed, path, method)
    assert status == 403 and "restricted" in body and API_KEY_HEADER in body, (status, body)
    status, _ = http(exposed, path, method, {API_KEY_HEADER: "wrong-key-of-enough-length"})
    assert status == 403
    assert grpc.is_model_ready(spec.ALIAS)


def test_http_works_with_the_key_and_health_without(exposed):
    status, body = http(exposed, "/v2/repository/index", "POST", {API_KEY_HEADER: KEY})
    assert status == 200 and spec.ALIAS in body
    assert http(exposed, "/v2/health/ready")[0] == 200
    status, body = http(exposed, f"/v2/models/{spec.ALIAS}/config")
    assert status == 200 and spec.IMAGE.name in body


def test_http_inference_stays_open(exposed):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(f"127.0.0.1:{exposed.ports.http}")
    try:
        inp = httpclient.InferInput(spec.IMAGE.name, [1, 32, 32, 3], spec.IMAGE.wire_dtype)
        inp.set_data_from_numpy(np.zeros((1, 32, 32, 3), np.uint8))
        result = c.infer(spec.ALIAS, [inp])
        assert result.as_numpy(spec.NUM_DETECTIONS.name).shape == (1, 1)
    finally:
        c.close()
