"""Ultralytics' own Triton client (TritonRemoteModel behind `YOLO("grpc://…")`) against the real
server: nothing beyond the URL and the task, over gRPC and over HTTP (through nginx), and the same
boxes as the project's client on the same photos."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_images

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.serve.launcher import Server

MODEL = spec.NETWORK_ALIAS


def _ultralytics_detections(url: str, images: dict[str, np.ndarray]) -> dict[str, tuple]:
    from ultralytics import YOLO

    model = YOLO(url, task="detect")  # nothing else: names, imgsz, stride come from the server
    out = {}
    for name, image in images.items():
        r = model(image, verbose=False)[0]
        b = r.boxes.cpu()
        out[name] = (b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(int), r.names)
    return out


def _assert_same_as_project_client(got: dict[str, tuple], client, images: dict[str, np.ndarray]) -> None:
    names = dict(enumerate(client.names))
    total = 0
    for name, image in images.items():
        boxes, scores, classes, their_names = got[name]
        assert their_names == names, "class names from the config's metadata, not Ultralytics' 999 defaults"
        want = client.detect(image).detections
        assert len(scores) == len(want.scores), name
        np.testing.assert_allclose(boxes, want.boxes, atol=0.05, err_msg=name)
        np.testing.assert_allclose(scores, want.scores, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(classes, want.classes)
        total += len(scores)
    assert total > 0


def test_ultralytics_grpc_client_gets_the_project_clients_boxes(server):
    """Against the staged variant whose detector the alias serves: INT8 here once its gate passed."""
    images = sample_images()
    got = _ultralytics_detections(f"grpc://{server.url}/{MODEL}", images)
    with DetectorClient(server.url, model=server.plan.network.ensemble, timeout_s=60) as client:
        _assert_same_as_project_client(got, client, images)


def test_ultralytics_http_client_through_the_proxy_gets_the_same_boxes(repo: Path, client, tmp_path):
    from yolo_triton.serve.http_proxy import ProxyUnavailable, find_nginx

    try:
        find_nginx()
    except ProxyUnavailable as e:
        pytest.skip(str(e))
    images = dict(list(sample_images().items())[:2])
    with Server(repo, only=["ort"], log=tmp_path / "tritonserver.log", http=True) as http_server:
        got = _ultralytics_detections(f"http://{http_server.http_url}/{MODEL}", images)
    _assert_same_as_project_client(got, client, images)


def test_network_alias_metadata_is_what_ultralytics_reads(server, facts):
    from ultralytics.utils.triton import TritonRemoteModel

    remote = TritonRemoteModel(f"grpc://{server.url}/{MODEL}")
    meta = remote.metadata
    assert meta["names"] == dict(enumerate(facts.names))
    assert meta["imgsz"] == [facts.imgsz, facts.imgsz] and meta["stride"] == 32 and meta["task"] == "detect"
    assert meta["batch"] == 1 and meta["args"]["dynamic"] is False and meta["args"]["nms"] is False
    assert {k: meta[k] for k in spec.NETWORK_CONVENTIONS} == spec.NETWORK_CONVENTIONS
    assert remote.input_names == [spec.PIXELS.name] and remote.output_names == [spec.RAW.name]
    raw = remote(np.zeros((1, 3, facts.imgsz, facts.imgsz), np.float32))[0]
    assert raw.shape == (1, facts.num_outputs, facts.num_anchors)


def test_every_ensemble_config_names_its_conventions(server, client):
    for model in server.ensembles():
        cfg = client.client.get_model_config(model, as_json=True)["config"]
        params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
        want = spec.NETWORK_CONVENTIONS if model == MODEL else spec.CONVENTIONS
        assert {k: params[k] for k in want} == want, model
        if model == MODEL:
            assert ast.literal_eval(params["metadata"])["names"] == dict(enumerate(client.names))
