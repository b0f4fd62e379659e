"""Accuracy gate: the served ensemble scores what Ultralytics scores, on the same weights.

Served: square letterbox to the checkpoint's size, ONNX Runtime FP32 on CPU, MULTI_LABEL NMS.
Ultralytics val: its own dataloader with rect=False (long side resized to the same size, padded to
the same square), PyTorch FP32, its own multi-label NMS.
"""

from __future__ import annotations

from test_serving import assert_same_detections

from yolo_triton import spec
from yolo_triton.client import evaluate, images


def test_served_map_equals_ultralytics_val(server, weights, facts, val_subset):
    """FP32 served = FP32 validated; INT8 has its own bound (test_int8.py)."""
    files, data = val_subset
    served = evaluate.served_map(server.url, spec.variant("ort_fused").ensemble, files, len(facts.names))
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
        ref = ultralytics_model.predict(image, imgsz=facts.imgsz, rect=False, device="cpu", verbose=False)[0].boxes
        assert_same_detections(ours, ref.xyxy.numpy(), ref.conf.numpy(), ref.cls.numpy().astype(int))
        found += len(ours.scores) > 0
    assert found >= 10, "the demo model should find shapes on most validation images"
