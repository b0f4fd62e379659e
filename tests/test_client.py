"""`yolo-triton detect` end to end: its lines, its JSON and its annotated images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import SAMPLES, sample_images

from yolo_triton import spec
from yolo_triton.client import detect
from yolo_triton.client.detector import DetectorClient


def test_detect_json_matches_direct_client(server, client, tmp_path, capsys):
    out = tmp_path / "result.json"
    rc = detect.main(["--url", server.url, "--model", client.model, "--json", str(out),
                      "--save-dir", str(tmp_path / "ann"), str(SAMPLES)])
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
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), err
    assert all(line.count(str(tmp_path)) == 1 for line in lines), "each error names its file once"
    assert "empty.jpg: empty file (0 bytes)" in lines[0]
    assert "notes.jpg: not a decodable image" in lines[1] and "re-save it as JPEG or PNG" in lines[1]
    assert "truncated.jpg: " in lines[2]
    assert [r["image"] for r in json.loads(out.read_text())] == [str(good)]


def test_the_short_example_client_prints_what_the_server_answers(server):
    """clients/grpc_client.py: tritonclient alone, no project code, against the real server. It
    calls `yolov8n`, which is INT8 where its gate passed: compared with that model's answer (INT8
    and FP32 may differ by a box near the threshold, as on bus.jpg on AVX2 CPUs)."""
    import subprocess
    import sys

    from conftest import ROOT, SAMPLES

    path = SAMPLES / "bus.jpg" if (SAMPLES / "bus.jpg").exists() else next(SAMPLES.glob("*.jpg"))
    with DetectorClient(server.url, model=spec.ALIAS, timeout_s=60) as client:
        want = client.detect(cv2.imread(str(path))).detections
        names = client.names
    out = subprocess.run([sys.executable, str(ROOT / "clients" / "grpc_client.py"), str(path), server.url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith(f"{len(want.scores)} detections in ")
    assert len(lines) == len(want.scores) + 1 and len(want.scores) > 0
    assert lines[0].split()[0] == names[int(want.classes[0])]


def test_a_missing_path_or_empty_folder_is_reported_and_the_rest_detected(server, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    good = next(iter(SAMPLES.glob("*.jpg")))
    out = tmp_path / "r.json"
    rc = detect.main(["--url", server.url, "--json", str(out), str(tmp_path / "nope.jpg"), str(tmp_path / "empty"),
                      str(good)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == [f"error: {tmp_path / 'nope.jpg'}: no such file or folder (check the path)",
                   f"error: {tmp_path / 'empty'}: folder has no image or video files (looked for " + err[1].split(
                       "(looked for ", 1)[1]]
    assert ".jpg" in err[1] and ".mp4" in err[1]
    assert [r["image"] for r in json.loads(out.read_text())] == [str(good)]


def test_nothing_to_detect_on_exits_2_with_one_line(server, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert detect.main(["--url", server.url, str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1].startswith("error: nothing to detect on: give image files")


def _video(path, frames):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


def test_video_frames_are_saved_apart_and_as_an_annotated_video(server, client, tmp_path):
    images = [cv2.resize(im, (320, 240)) for im in sample_images().values()][:3]
    _video(tmp_path / "clip.mp4", images)
    out, ann = tmp_path / "r.json", tmp_path / "ann"
    rc = detect.main(["--url", server.url, "--json", str(out), "--save-dir", str(ann), "--save-video",
                      str(tmp_path / "clip.mp4")])
    assert rc == 0
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == [f"{tmp_path / 'clip.mp4'}#{i}" for i in range(3)]
    assert sorted(p.name for p in ann.iterdir()) == ["clip_0.jpg", "clip_1.jpg", "clip_2.jpg", "clip_annotated.mp4"]
    saved = [cv2.imread(str(ann / f"clip_{i}.jpg")) for i in range(3)]
    assert all(s.shape == (240, 320, 3) for s in saved)
    assert not np.array_equal(saved[0], saved[1]), "each frame has its own file"
    cap = cv2.VideoCapture(str(ann / "clip_annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    ok, first = cap.read()
    cap.release()
    assert ok and first.shape == (240, 320, 3)
    # lossy codecs: the video's first frame is close to the annotated JPEG, far from the plain one
    src = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    _, plain = src.read()
    src.release()
    assert records[0]["detections"], "the first frame has boxes to draw"
    assert np.abs(first.astype(int) - saved[0]).mean() < np.abs(first.astype(int) - plain).mean()


def test_url_forms_and_what_a_wrong_url_says(server, tmp_path, capsys):
    good = str(next(iter(SAMPLES.glob("*.jpg"))))
    assert detect.main(["--url", f"grpc://{server.url}", good]) == 0
    assert detect.main(["--url", f"grpc://{server.url}/{spec.variant('ort').ensemble}", good]) == 0
    capsys.readouterr()
    host = server.url.split(":")[0]
    assert detect.main(["--url", f"http://{host}:8000", good]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "speaks gRPC, not HTTP" in err and f"--url {host}:8001" in err
    metrics = f"{host}:{server.ports.metrics}"  # an HTTP port, as nginx's is
    assert detect.main(["--url", metrics, "--timeout", "10", good]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{metrics} does not answer gRPC" in err and "GRPC_PORT" in err, err
    assert detect.main(["--url", server.url, "--model", "yolov9", good]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no model 'yolov9'" in err and "pass one of them with --model" in err
    for name in server.ensembles():
        assert name in err


def test_a_label_at_the_right_or_top_edge_is_drawn_inside_the_image():
    """A box against the right border once had its label cut off after a few letters."""
    from yolo_triton.client.draw import annotate
    from yolo_triton.pipeline.nms import Detections

    black = np.zeros((100, 200, 3), np.uint8)
    det = Detections(np.array([[150, 40, 199, 90]], np.float32), np.array([0.9], np.float32),
                     np.array([0], np.int32))
    drawn = annotate(black, det, ("rectangle",)).any(axis=2)
    label_rows = drawn[:36]  # above the box: only the label is drawn there
    assert label_rows[:, :150].any(), "the label starts left of the box, so all of it fits"
    top = Detections(np.array([[10, 0, 60, 30]], np.float32), np.array([0.9], np.float32), np.array([0], np.int32))
    assert annotate(black, top, ("rectangle",))[2:30, 12:58].any(), "a box at the top edge gets its label inside"
