"""INT8 on the CPU: the quantised detector, its agreement with FP32, the accuracy gate, and how
the gate decides what `yolov8n` serves.

Bounds, and why they are what they are (measured on the demo checkpoint at 320, 64 calibration
images of the train split):
- Box agreement: on the 200-image val split, 96.7% of FP32's boxes (confidence 0.25) have an INT8
  box of the same class at IoU >= 0.9, 98.5% at IoU >= 0.5; the median score moved by 0.006, the
  95th percentile by 0.037. The misses are boxes whose score sits next to the 0.25 threshold and
  drops out (or in) under quantisation, not boxes that moved. AGREE_MIN leaves room for 40 images
  (about 180 boxes, one box is 0.6%).
- The gate: INT8 may lose at most 0.01 mAP50-95 against Ultralytics' FP32 validator (the issue's
  bound). On the 40-image subset INT8 scored +0.0025 against it, so the same bound holds there.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import torch
from ultralytics.utils.metrics import box_iou

from yolo_triton import spec
from yolo_triton.client import evaluate, images
from yolo_triton.client.detector import DetectorClient
from yolo_triton.repository import gate, quantize
from yolo_triton.serve import launcher

INT8 = spec.variant("ort_int8_fused")
FP32 = spec.variant("ort_fused")
AGREE_IOU, AGREE_MIN = 0.9, 0.93
SCORE_MEDIAN_MAX = 0.02


def test_int8_detector_is_quantised_with_a_float_head(repo):
    path = repo / INT8.detector / "1" / INT8.artefact
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50, "not a QDQ model"
    quantized_inputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    head = set(quantize.head_nodes(repo / FP32.detector / "1" / FP32.artefact))
    head_convs = [n for n in graph.node if n.op_type == "Conv" and n.name in head]
    assert len(head_convs) == 19, "YOLOv8's detect head: 3 scales x (cv2 + cv3) x 3 convs, and the DFL's"
    assert all(n.input[1] not in quantized_inputs for n in head_convs), "the detect head's weights stay FP32"
    body = [n for n in graph.node if n.op_type == "Conv" and n.name not in head]
    assert body and all(n.input[1] in quantized_inputs for n in body), "every body conv has INT8 weights"
    native = repo / spec.variant("onnx_int8").detector / "1" / "model.onnx"
    assert native.read_bytes() == path.read_bytes(), "the native onnxruntime INT8 detector serves the same model"


def _matches(fp32, int8) -> tuple[list[float], list[float]]:  # noqa: ANN001 - nms.Detections
    """Per FP32 box: the best IoU with an INT8 box of the same class, and that box's score change."""
    if not len(fp32.scores):
        return [], []
    if not len(int8.scores):
        return [0.0] * len(fp32.scores), []
    iou = box_iou(torch.from_numpy(fp32.boxes), torch.from_numpy(int8.boxes)).numpy()
    iou[fp32.classes[:, None] != int8.classes[None, :]] = 0
    best = iou.argmax(1)
    ious = iou.max(1)
    return list(ious), [abs(float(fp32.scores[i] - int8.scores[j])) for i, j in enumerate(best) if ious[i] > 0]


def test_int8_boxes_agree_with_fp32(server, val_subset):
    files, _ = val_subset
    ious: list[float] = []
    score_changes: list[float] = []
    with DetectorClient(server.url, model=FP32.ensemble, timeout_s=60) as f, \
            DetectorClient(server.url, model=INT8.ensemble, timeout_s=60) as q:
        for path in files:
            image = images.read(path)
            a, b = _matches(f.detect(image).detections, q.detect(image).detections)
            ious += a
            score_changes += b
    assert len(ious) > 100, "the demo checkpoint finds its shapes"
    agree = float(np.mean(np.array(ious) >= AGREE_IOU))
    assert agree >= AGREE_MIN, f"{agree:.3f} of {len(ious)} FP32 boxes matched at IoU >= {AGREE_IOU}"
    assert float(np.median(score_changes)) <= SCORE_MEDIAN_MAX, np.median(score_changes)


def test_int8_staged_equals_int8_fused(server, client):
    """The same stage objects and the same INT8 session settings: staged and fused agree exactly."""
    from conftest import sample_images
    from test_serving import assert_same_detections

    with DetectorClient(server.url, model=spec.variant("ort_int8").ensemble, timeout_s=60) as staged, \
            DetectorClient(server.url, model=INT8.ensemble, timeout_s=60) as fused:
        for image in sample_images().values():
            want = staged.detect(image).detections
            assert_same_detections(fused.detect(image).detections, want.boxes, want.scores, want.classes,
                                   iou_min=0.9999, score_tol=1e-5)


def test_served_int8_passes_the_accuracy_gate(server, weights, facts, val_subset):
    """`make eval MODEL=yolov8n_ort_int8_fused` on the 40-image subset, over gRPC."""
    files, data = val_subset
    served = evaluate.served_map(server.url, INT8.ensemble, files, len(facts.names))
    ref = evaluate.ultralytics_map(str(weights), data, files, facts.imgsz)
    assert served.instances == ref.instances > 0
    assert served.map50_95 >= ref.map50_95 - gate.GATE_BOUND, (served, ref)
    recorded = gate.read(server.repo, "int8")
    assert recorded is not None and recorded.passed and recorded.images == len(files)
    assert abs(recorded.map50_95 - served.map50_95) <= 1e-3, "the build's in-process gate measures what is served"


def test_yolov8n_is_int8_because_its_gate_passed(server):
    assert server.plan.alias == INT8
    assert server.plan.network == spec.variant("ort_int8"), "Ultralytics' network alias follows the same gate"
    assert "gate passed" in server.plan.why and "INT8 mAP50-95" in server.plan.why
    assert f"yolov8n -> {INT8.ensemble}: fastest loadable variant" in server.describe()


def test_a_failed_or_stale_gate_keeps_yolov8n_on_fp32(repo, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    record = json.loads((copy / gate.GATE_FILE).read_text())
    record["int8"]["passed"] = False
    (copy / gate.GATE_FILE).write_text(json.dumps(record))
    plan = launcher.plan_models(copy, set(), gpu=False)
    assert plan.alias == FP32 and "gate failed" in plan.passed_over[INT8.ensemble]
    assert plan.network == spec.variant("ort"), "the network alias falls back to the FP32 detector too"
    record["int8"]["passed"] = True
    record["int8"]["artefact_sha256"] = "0" * 64  # measured another model than the one in the folder
    (copy / gate.GATE_FILE).write_text(json.dumps(record))
    plan = launcher.plan_models(copy, set(), gpu=False)
    assert plan.alias == FP32 and "no INT8 gate recorded" in plan.passed_over[INT8.ensemble]
    (copy / gate.GATE_FILE).unlink()
    assert launcher.plan_models(copy, set(), gpu=False).alias == FP32


def test_calibration_folder_without_images_is_a_clear_error(weights, tmp_path, capsys):
    from yolo_triton.repository import build

    empty = tmp_path / "empty"
    empty.mkdir()
    code = build.main(["--weights", str(weights), "--repo", str(tmp_path / "r"), "--calib-images", str(empty)])
    err = capsys.readouterr().err
    assert code == 2 and f"--calib-images {empty}: no image files" in err, err
