"""Accuracy gate: the served ensemble scores what Ultralytics scores, on the same weights.

Served: square letterbox to the checkpoint's size, ONNX Runtime FP32 on CPU, MULTI_LABEL NMS.
Ultralytics val: its own dataloader with rect=False (long side resized to the same size, padded to
the same square), PyTorch FP32, its own multi-label NMS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_serving import assert_same_detections

from yolo_triton.client import evaluate, images

SUBSET = 40


@pytest.fixture(scope="session")
def val_subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict]:
    data_yaml = evaluate.write_val_split(tmp_path_factory.mktemp("shapes"), count=SUBSET)
    return evaluate.val_images(data_yaml, None)


def test_served_map_equals_ultralytics_val(server, weights, facts, val_subset):
    files, data = val_subset
    served = evaluate.served_map(server.url, "yolov8n", files, len(facts.names))
    ref = evaluate.ultralytics_map(str(weights), data, files, facts.imgsz)
    assert served.instances == ref.instances > 0
    assert ref.map50 > 0.8, "the demo checkpoint should detect its own validation shapes"
    assert abs(served.map50_95 - ref.map50_95) <= 0.005, (served, ref)
    assert abs(served.map50 - ref.map50) <= 0.01, (served, ref)


def test_per_image_boxes_equal_ultralytics_predict(client, facts, ultralytics_model, val_subset):
    files, _ = val_subset
    found = 0
    for f in files[:15]:
        image = images.read(f)
        ours = client.detect(image).detections
        ref = ultralytics_model.predict(image, imgsz=facts.imgsz, rect=False, verbose=False)[0].boxes
        assert_same_detections(ours, ref.xyxy.numpy(), ref.conf.numpy(), ref.cls.numpy().astype(int))
        found += len(ours.scores) > 0
    assert found >= 10, "the demo model should find shapes on most validation images"
