"""HTTP through the nginx front (yolo_triton.http_proxy) against a real tritonserver.

Triton 2.51's HTTP endpoint crashes on deeply nested JSON and inflates gzip bodies without a
limit; each attack here goes through the proxy (or straight at Triton's private port) and is
followed by proof that the server is alive and answers a good request exactly as before.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import tritonclient.http as httpclient
from conftest import SAMPLES

from yolo_triton import spec
from yolo_triton.serve.http_proxy import PROXY_KEY_HEADER, HttpProxy, ProxyUnavailable, find_nginx
from yolo_triton.serve.launcher import Server, free_port

MODEL = spec.variant("ort").ensemble
OUTPUTS = [t.name for t in spec.ENSEMBLE_OUTPUTS]
INFER = f"/v2/models/{MODEL}/infer"
DEEP_JSON = b"[" * 1_000_000  # 300,000 levels crash tritonserver 2.51
RSS_SLACK = 50 * 1024 * 1024

try:
    find_nginx()
except ProxyUnavailable as e:
    pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """The launcher with HTTP on: Triton's HTTP on a private loopback port, nginx on ports.http."""
    log = tmp_path_factory.mktemp("http-front") / "tritonserver.log"
    with Server(repo, only=["ort"], log=log, http=True) as s:
        assert isinstance(s.proxy, HttpProxy) and s.proxy.upstream_port == s.inner_http_port
        yield s


@pytest.fixture(scope="module")
def proxy(server: Server) -> HttpProxy:
    return server.proxy


def rss(server: Server) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


def detect(url: str, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One binary-tensor infer with tritonclient.http, as a client of the service does it."""
    if image is None:
        image = cv2.imread(str(SAMPLES / "bus.jpg"))
    c = httpclient.InferenceServerClient(url, network_timeout=120)
    try:
        inp = httpclient.InferInput(spec.IMAGE.name, [1, *image.shape], spec.IMAGE.wire_dtype)
        inp.set_data_from_numpy(image[None])
        result = c.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput(n) for n in OUTPUTS])
        return {n: result.as_numpy(n) for n in OUTPUTS}
    finally:
        c.close()


@pytest.fixture(scope="module")
def baseline(proxy: HttpProxy) -> dict[str, np.ndarray]:
    return detect(proxy.url)


def send(url: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         method: str = "POST", chunked: bool = False) -> tuple[int, str]:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        if chunked:
            pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
            conn.request(method, path, body=pieces, headers=headers or {}, encode_chunked=True)
        else:
            conn.request(method, path, body=body if method == "POST" else None, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def error_of(body: str) -> str:
    return json.loads(body)["error"]


def assert_still_serving(server: Server, proxy: HttpProxy, baseline: dict[str, np.ndarray]) -> None:
    assert server.proc.poll() is None, f"tritonserver died (exit code {server.proc.returncode})"
    assert send(proxy.url, "/v2/health/ready", method="GET")[0] == 200
    again = detect(proxy.url)
    for name in OUTPUTS:
        np.testing.assert_array_equal(again[name], baseline[name], err_msg=name)
        assert again[name].dtype == baseline[name].dtype


@functools.cache
def gzip_bomb(inflated: int = 200 * 1024 * 1024) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    chunk = bytes(1 << 20)
    body = b"".join(z.compress(chunk) for _ in range(inflated // len(chunk))) + z.flush()
    assert len(body) < 1 << 20
    return body


def test_through_the_proxy_the_service_works(proxy, baseline):
    c = httpclient.InferenceServerClient(proxy.url, network_timeout=120)
    try:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
        assert c.get_server_metadata()["version"]
        assert {i["name"] for i in c.get_model_metadata(MODEL)["inputs"]} >= {spec.IMAGE.name}
        assert c.get_model_config(MODEL)["name"] == MODEL
        assert c.get_inference_statistics(MODEL)["model_stats"]
    finally:
        c.close()
    assert set(baseline) == set(OUTPUTS) and baseline[spec.NUM_DETECTIONS.name].shape == (1, 1)
    small = detect(proxy.url, np.zeros((32, 32, 3), np.uint8))
    assert small[spec.NUM_DETECTIONS.name].shape == (1, 1)


def test_admin_api_through_the_proxy_needs_the_admin_key(proxy, server, baseline):
    status, body = send(proxy.url, "/v2/repository/index", headers={"x-api-key": server.api_key})
    assert status == 200 and MODEL in body, (status, body)
    c = httpclient.InferenceServerClient(proxy.url)
    try:
        assert MODEL in {m["name"] for m in c.get_model_repository_index(headers={"x-api-key": server.api_key})}
    finally:
        c.close()
    status, body = send(proxy.url, f"/v2/repository/models/{MODEL}/unload")
    assert status == 403 and "x-api-key" in body, (status, body)
    assert_still_serving(server, proxy, baseline)


def test_a_client_sent_proxy_key_is_replaced(proxy):
    wrong = {PROXY_KEY_HEADER: "wrong-key-of-enough-length"}
    assert send(proxy.url, "/v2/health/ready", method="GET", headers=wrong)[0] == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_deep_json_body_is_refused(proxy, server, baseline, chunked):
    status, body = send(proxy.url, INFER, DEEP_JSON, chunked=chunked)
    assert status == 413 and "32 KiB" in error_of(body), (status, body)
    assert_still_serving(server, proxy, baseline)


@pytest.mark.parametrize("length", ["1000000", "10000", "-1", "12a", "1, 2"])
def test_deep_json_in_the_json_part_of_a_binary_request_is_refused(proxy, server, baseline, length):
    status, body = send(proxy.url, INFER, DEEP_JSON, headers={"Inference-Header-Content-Length": length})
    assert status == 400 and "Inference-Header-Content-Length" in error_of(body), (status, body)
    assert_still_serving(server, proxy, baseline)


def test_json_part_within_the_limit_reaches_triton(proxy, server, baseline):
    """9999 bytes of `[` reach Triton, which refuses them as bad JSON (with a 500), harmlessly."""
    status, body = send(proxy.url, INFER, b"[" * 9999, headers={"Inference-Header-Content-Length": "9999"})
    assert status == 500 and "failed to parse the request JSON" in error_of(body), (status, body)
    assert_still_serving(server, proxy, baseline)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP", "identity, gzip"])
def test_compressed_body_is_refused(proxy, server, baseline, encoding):
    bomb = gzip_bomb()
    before = rss(server)
    for headers in ({}, {"Inference-Header-Content-Length": "100"}):
        status, body = send(proxy.url, INFER, bomb, headers={"Content-Encoding": encoding, **headers})
        assert status == 415 and "uncompressed" in error_of(body), (status, body)
    assert rss(server) - before < RSS_SLACK
    assert_still_serving(server, proxy, baseline)


def test_identity_content_encoding_is_accepted(proxy):
    assert send(proxy.url, "/v2/health/ready", method="GET", headers={"Content-Encoding": "identity"})[0] == 200


def test_compressed_transfer_encoding_is_refused(proxy, server, baseline):
    host, port = proxy.url.rsplit(":", 1)
    bomb = gzip_bomb(16 << 20)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".encode()
                  + f"{len(bomb):x}\r\n".encode() + bomb + b"\r\n0\r\n\r\n")
        reply = s.makefile("rb").read().decode(errors="replace")
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 501") and "Transfer-Encoding" in error_of(body), reply
    assert_still_serving(server, proxy, baseline)


def test_body_over_the_cap_is_refused(server, proxy, baseline, tmp_path):
    cap = 1 << 20
    with HttpProxy("127.0.0.1", free_port(), server.inner_http_port, proxy.proxy_key, tmp_path / "nginx",
                   max_body_bytes=cap) as small:
        for chunked in (False, True):
            status, body = send(small.url, INFER, bytes(2 * cap),
                                headers={"Inference-Header-Content-Length": "100"}, chunked=chunked)
            assert status == 413 and str(cap) in error_of(body), (status, body)
        assert detect(small.url, np.zeros((32, 32, 3), np.uint8))[spec.NUM_DETECTIONS.name].shape == (1, 1)
    assert_still_serving(server, proxy, baseline)


def test_browser_origin_is_refused(proxy, server, baseline):
    load = f"/v2/repository/models/{MODEL}/load"
    for path, method in ((load, "POST"), (INFER, "POST"), ("/v2/health/ready", "GET")):
        status, body = send(proxy.url, path, b"{}", headers={"Origin": "http://evil.example",
                                                               "Content-Type": "text/plain"}, method=method)
        assert status == 403 and "Origin" in error_of(body), (path, status, body)
    status, body = send(proxy.url, load)
    assert status == 403 and "x-api-key" in error_of(body), (status, body)  # Triton's own refusal
    assert_still_serving(server, proxy, baseline)


def test_inner_port_refuses_requests_without_the_proxy_key(server, proxy, baseline):
    inner = f"127.0.0.1:{server.inner_http_port}"
    status, body = send(inner, "/v2/health/ready", method="GET")
    assert status == 403 and PROXY_KEY_HEADER in body, (status, body)
    status, body = send(inner, INFER, DEEP_JSON)
    assert status == 403 and PROXY_KEY_HEADER in body, (status, body)
    before = rss(server)
    status, body = send(inner, INFER, gzip_bomb(), headers={"Content-Encoding": "gzip"})
    assert status == 403 and PROXY_KEY_HEADER in body, (status, body)
    assert rss(server) - before < RSS_SLACK
    assert_still_serving(server, proxy, baseline)


def test_unknown_paths_answer_json_404(proxy):
    status, body = send(proxy.url, "/metrics", method="GET")
    assert status == 404 and "/v2/" in error_of(body)


def test_state_is_private_and_stop_is_idempotent(server, proxy, tmp_path):
    state = tmp_path / "nginx"
    p = HttpProxy("127.0.0.1", free_port(), server.inner_http_port, proxy.proxy_key, state).start()
    try:
        assert state.stat().st_mode & 0o777 == 0o700
        assert p.config_path.stat().st_mode & 0o777 == 0o600 and p.proxy_key in p.config_path.read_text()
        assert send(p.url, "/v2/health/live", method="GET")[0] == 200
    finally:
        p.stop()
    p.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.listen_port), timeout=2).close()


def test_a_busy_port_is_reported(server, proxy, tmp_path):
    with pytest.raises(ProxyUnavailable, match="Address already in use"):
        HttpProxy("127.0.0.1", proxy.listen_port, server.inner_http_port, proxy.proxy_key, tmp_path / "nginx").start()
    assert send(proxy.url, "/v2/health/live", method="GET")[0] == 200


def test_a_killed_owner_leaves_no_nginx(tmp_path):
    """nginx runs in a session of its own, so it must end by itself when its owner (the launcher, whose
    main thread starts it with die_with_parent) is killed."""
    port, state = free_port(), tmp_path / "nginx"
    code = (f"import sys, time; from pathlib import Path; from yolo_triton.serve.http_proxy import HttpProxy; "
            f"HttpProxy('127.0.0.1', {port}, {free_port()}, 'k' * 16, Path({str(state)!r}), "
            "die_with_parent=True).start(); "
            "print('up', flush=True); time.sleep(600)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "up"
        master = int((state / "nginx.pid").read_text())
        assert psutil.pid_exists(master)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(master) and psutil.Process(master).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "nginx outlived its owner"
        time.sleep(0.1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.parametrize("shape", [[1, 4611686018427387905, 4, 3], [1, -2, -2, 3]], ids=["overflow", "negative"])
def test_crafted_image_shape_over_http_json_is_refused_by_the_guard(server, proxy, baseline, shape):
    """Attack 1 over HTTP: an IMAGE shape whose element count overflows to the 12 bytes sent (or is
    negative) killed the preprocess stub. The guard refuses the first before Triton stores the request;
    Triton's JSON reader refuses the second itself (shapes are unsigned there, unlike in gRPC)."""
    body = json.dumps({"inputs": [{"name": spec.IMAGE.name, "datatype": spec.IMAGE.wire_dtype, "shape": shape,
                                   "data": [0] * 12}]}).encode()
    for _ in range(3):
        status, text = send(proxy.url, f"/v2/models/{spec.ALIAS}/infer", body, {"Content-Type": "application/json"})
        if shape[1] < 0:
            assert status == 500 and "Unable to parse 'shape'" in error_of(text), (status, text)
        else:
            assert status == 400 and spec.IMAGE.name in error_of(text) and "more elements" in text, (status, text)
    assert_still_serving(server, proxy, baseline)
