"""The crowded-scene checkpoint the benchmarks measure: crowded, deterministic, loadable as any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_triton.client import images
from yolo_triton.data import crowded
from yolo_triton.paths import SAMPLES
from yolo_triton.repository import export


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crowded.make(tmp_path_factory.mktemp("crowded") / "crowded.pt")


def test_bus_is_a_crowded_scene(checkpoint: Path) -> None:
    """At least 100 boxes on bus.jpg at confidence 0.25 (the benchmarks' crowded scene), and below
    max_det so that nothing is capped, with many classes and real overlaps between the boxes."""
    import torch
    from torchvision.ops import box_iou

    model = export.load(str(checkpoint))
    assert model.names[0] == "person" and len(model.names) == 80
    result = model.predict(images.read(SAMPLES / "bus.jpg"), imgsz=crowded.IMGSZ, conf=0.25, device="cpu",
                           verbose=False)[0]
    n = len(result.boxes)
    assert 100 <= n < 300, n
    assert len(set(result.boxes.cls.tolist())) >= 10
    iou = box_iou(result.boxes.xyxy, result.boxes.xyxy) - torch.eye(n)
    assert (iou.max(dim=1).values > 0.3).float().mean() > 0.5  # dense, overlapping boxes


def test_same_weights_every_time(checkpoint: Path, tmp_path: Path) -> None:
    import torch

    again = crowded.make(tmp_path / "again.pt")
    a, b = (torch.load(p, weights_only=False)["model"].state_dict() for p in (checkpoint, again))
    assert a.keys() == b.keys()
    assert [(k, (a[k].float() - b[k].float()).abs().max().item()) for k in a if not torch.equal(a[k], b[k])] == []


def test_named_by_its_keyword() -> None:
    assert crowded.resolve("yolov8n.pt") == "yolov8n.pt"
    assert crowded.resolve(crowded.NAME) == str(crowded.DEFAULT_PATH)
