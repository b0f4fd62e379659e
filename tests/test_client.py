"""`yolo-triton detect` end to end: its lines, its JSON and its annotated images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import SAMPLES, sample_images

from yolo_triton.client import detect


def test_detect_json_matches_direct_client(server, client, tmp_path, capsys):
    out = tmp_path / "result.json"
    rc = detect.main(["--url", server.url, "--json", str(out), "--save-dir", str(tmp_path / "ann"), str(SAMPLES)])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    records = json.loads(out.read_text())
    images = sample_images()
    assert len(records) == len(images) == len(printed)
    names = client.names
    for rec in records:
        assert set(rec) == {"image", "width", "height", "detections", "latency_ms"}
        image = images[rec["image"].split("/")[-1]]
        assert (rec["height"], rec["width"]) == image.shape[:2]
        assert rec["latency_ms"] > 0
        direct = client.detect(image).detections
        assert len(rec["detections"]) == len(direct.scores)
        for d, box, score, k in zip(rec["detections"], direct.boxes, direct.scores, direct.classes):
            assert set(d) == {"box", "score", "class_id", "class_name"}
            np.testing.assert_allclose(d["box"], box, atol=0.01)
            assert d["score"] == pytest.approx(float(score), abs=1e-5)
            assert d["class_id"] == int(k) and d["class_name"] == names[k]
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= rec["width"] and 0 <= y1 <= y2 <= rec["height"]
        annotated = cv2.imread(str(tmp_path / "ann" / (rec["image"].split("/")[-1].rsplit(".", 1)[0] + ".jpg")))
        assert annotated is not None and annotated.shape == image.shape
    assert sum(len(r["detections"]) for r in records) > 0


def test_detect_converts_grayscale_and_rgba_files(server, tmp_path):
    image = next(iter(sample_images().values()))
    cv2.imwrite(str(tmp_path / "gray.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))
    out = tmp_path / "r.json"
    files = [str(tmp_path / "gray.png"), str(tmp_path / "rgba.png")]
    assert detect.main(["--url", server.url, "--json", str(out), *files]) == 0
    records = json.loads(out.read_text())
    assert [r["width"] for r in records] == [image.shape[1]] * 2


def test_detect_reports_bad_files_and_carries_on(server, tmp_path, capsys):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    good = next(iter(SAMPLES.glob("*.jpg")))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    out = tmp_path / "r.json"
    rc = detect.main(["--url", server.url, "--json", str(out), str(tmp_path / "empty.jpg"),
                      str(tmp_path / "notes.jpg"), str(truncated), str(good)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "empty.jpg: error" in err and "0 bytes" in err
    assert "notes.jpg: error" in err and "not a decodable image" in err
    assert "truncated.jpg: error" in err
    assert [r["image"] for r in json.loads(out.read_text())] == [str(good)]


def test_the_short_example_client_prints_what_the_server_answers(server, client):
    """clients/grpc_client.py: tritonclient alone, no project code, against the real server."""
    import subprocess
    import sys

    from conftest import ROOT, SAMPLES

    path = SAMPLES / "bus.jpg" if (SAMPLES / "bus.jpg").exists() else next(SAMPLES.glob("*.jpg"))
    want = client.detect(cv2.imread(str(path))).detections
    out = subprocess.run([sys.executable, str(ROOT / "clients" / "grpc_client.py"), str(path), server.url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith(f"{len(want.scores)} detections in ")
    assert len(lines) == len(want.scores) + 1 and len(want.scores) > 0
    names = client.names
    assert lines[0].split()[0] == names[int(want.classes[0])]
