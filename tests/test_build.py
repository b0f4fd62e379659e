"""`yolo-triton build` as `make demo` runs it offline: the fallback says why and how in one line
(first and last), from any working directory, and no GPU artefact is exported where no GPU is."""

from __future__ import annotations

import pytest

from yolo_triton import spec
from yolo_triton.repository import build
from yolo_triton.serve.install import gpu_available


def test_offline_fallback_says_why_and_how_and_skips_the_gpu_artefact(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo checkpoint is found from anywhere, not only the project root
    repo = tmp_path / "repo"
    assert build.main(["--weights", "nowhere/yolov8n.pt", "--repo", str(repo), "--fallback"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    notice = [line for line in lines if "FALLING BACK" in line]
    assert len(notice) == 2 and notice[0] == notice[1] == lines[-1], "first and again as the last line"
    assert "FALLING BACK to assets/demo/yolov8n-shapes.pt" in notice[0]
    assert "because checkpoint nowhere/yolov8n.pt does not exist" in notice[0]
    assert "make build-engines WEIGHTS=path/to/best.pt" in notice[0]
    assert (repo / spec.variant("ort").detector / "1" / "model.onnx").is_file()
    gpu = repo / spec.variant("gpu").detector / "1" / spec.variant("gpu").artefact
    if gpu_available():
        pytest.skip("a GPU is visible: the GPU artefact is exported here")
    assert not gpu.exists()
    assert any("GPU detector artefact skipped: no GPU visible (--gpu-artefact" in line for line in lines)


def test_without_fallback_a_missing_checkpoint_exits_2_naming_the_fix(tmp_path, capsys):
    assert build.main(["--weights", "nowhere/yolov8n.pt", "--repo", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["build-engines: checkpoint nowhere/yolov8n.pt does not exist; pass a local checkpoint: "
                   "make build-engines WEIGHTS=path/to/best.pt (or make demo WEIGHTS=…, yolo-triton build --weights …)"]
