"""The pre/post math against hand-computed cases and against Ultralytics' own functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ultralytics.data.augment import LetterBox
from ultralytics.utils import ops

from yolo_triton.pipeline import geometry, nms
from yolo_triton.pipeline.postprocess import pad_batch, postprocess_one, unpad


def test_letterbox_portrait_hand_computed():
    # 810 wide x 1080 high into 640: r = 640/1080, 810*r = 480 -> 80 px of padding each side.
    lb = geometry.plan(1080, 810, 640)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (480, 640, 80, 0)
    assert lb.gain_x == pytest.approx(480 / 810) and lb.gain_y == pytest.approx(640 / 1080)


def test_letterbox_odd_padding_rounds_like_ultralytics():
    # 100 x 37 into 64: new 64 x 24 (23.68 rounds to 24), 40 px to split: 20 top, 20 bottom.
    lb = geometry.plan(37, 100, 64)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (64, 24, 0, 20)
    # 33 high: 64 x 21, 43 px to split: round(21.4) = 21 top, 22 bottom.
    lb = geometry.plan(33, 100, 64)
    assert (lb.new_h, lb.pad_y) == (21, 21)


def test_letterbox_tiny_image_scales_up():
    lb = geometry.plan(1, 1, 320)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (320, 320, 0, 0)
    lb = geometry.plan(2, 1000, 320)  # extreme aspect ratio keeps at least one row
    assert lb.new_h == 1 and lb.new_w == 320 and lb.pad_y == 159


@pytest.mark.parametrize("shape", [(1080, 810), (720, 1280), (17, 300), (640, 640), (3000, 4000), (5, 7)])
def test_letterbox_pixels_equal_ultralytics(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours, _ = geometry.letterbox(img, 320)
    theirs = LetterBox((320, 320), auto=False)(image=img)
    np.testing.assert_array_equal(ours, theirs)


def test_to_pixels_is_rgb_chw_unit_range():
    canvas = np.zeros((1, 2, 2, 3), np.uint8)
    canvas[..., 0] = 255  # blue in BGR
    px = geometry.to_pixels(canvas)
    assert px.shape == (1, 3, 2, 2) and px.dtype == np.float32
    assert (px[0, 2] == 1.0).all() and (px[0, :2] == 0.0).all()  # blue lands in the last (RGB) plane


def test_to_pixels_equals_ultralytics_preprocess_bit_for_bit():
    """Ultralytics' `preprocess`: BGR->RGB, HWC->CHW, float32 / 255; into a reused batch buffer too."""
    canvases = np.random.default_rng(3).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    theirs = (torch.from_numpy(np.ascontiguousarray(canvases[..., ::-1].transpose(0, 3, 1, 2))).float() / 255).numpy()
    buffer = np.full((4, 3, 32, 48), np.nan, np.float32)
    px = geometry.to_pixels(canvases, out=buffer[:3])
    np.testing.assert_array_equal(px, theirs)
    assert np.shares_memory(px, buffer) and np.isnan(buffer[3]).all()


def test_unletterbox_maps_back_and_clips():
    lb = geometry.plan(1080, 810, 640).as_array()
    # A box at the left padding edge maps to x=0; one past the image clips to its width.
    boxes = np.array([[80, 0, 560, 640], [70, -5, 600, 700]], np.float32)
    out = geometry.unletterbox(boxes, lb)
    np.testing.assert_allclose(out[0], [0, 0, 810, 1080], atol=1e-3)
    np.testing.assert_allclose(out[1], [0, 0, 810, 1080], atol=1e-3)


@pytest.mark.parametrize("shape", [(1080, 810), (720, 1280), (33, 100)])
def test_unletterbox_equals_ultralytics_scale_boxes(shape):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 320, (20, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 80, (20, 2)).astype(np.float32)], 1)
    ours = geometry.unletterbox(boxes, geometry.plan(*shape, 320).as_array())
    theirs = ops.scale_boxes((320, 320), torch.from_numpy(boxes.copy()), shape).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def _raw(boxes_xywh: list[list[float]], scores: list[list[float]]) -> np.ndarray:
    """A detector output (4 + nc, anchors) from per-anchor boxes and class scores."""
    return np.concatenate([np.array(boxes_xywh, np.float32).T, np.array(scores, np.float32).T])


def test_no_detections_below_threshold():
    raw = _raw([[10, 10, 4, 4]], [[0.25, 0.1]])  # exactly at conf: strict '>' drops it
    det = nms.decode(raw, 0.25, 0.7, 300)
    assert det.boxes.shape == (0, 4) and det.scores.shape == (0,)


def test_overlapping_same_class_suppressed_keeping_best():
    raw = _raw([[50, 50, 20, 20], [51, 50, 20, 20], [52, 51, 20, 20]], [[0.6, 0], [0.9, 0], [0.7, 0]])
    det = nms.decode(raw, 0.25, 0.5, 300)
    assert det.scores.tolist() == pytest.approx([0.9])
    np.testing.assert_allclose(det.boxes[0], [41, 40, 61, 60])


def test_nms_is_per_class():
    raw = _raw([[50, 50, 20, 20], [50, 50, 20, 20]], [[0.9, 0.0], [0.0, 0.8]])
    det = nms.decode(raw, 0.25, 0.5, 300)
    assert det.classes.tolist() == [0, 1]


def test_nms_ties_keep_first_anchor():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]], np.float32)
    keep = nms.nms(boxes, np.array([0.5, 0.5, 0.5], np.float32), 0.5)
    assert keep.tolist() == [0, 2]


def test_iou_exactly_at_threshold_is_kept():
    # Two 10x10 boxes sharing half: IoU = 50 / 150 = 1/3; suppression needs IoU > threshold.
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)
    assert nms.nms(boxes, np.array([0.9, 0.8], np.float32), 1 / 3 + 1e-6).tolist() == [0, 1]
    assert nms.nms(boxes, np.array([0.9, 0.8], np.float32), 0.3).tolist() == [0]


def test_max_det_limits_after_nms():
    raw = _raw([[i * 30 + 10, 10, 10, 10] for i in range(10)], [[0.5 + i / 100] for i in range(10)])
    det = nms.decode(raw, 0.25, 0.7, 3)
    assert det.scores.tolist() == pytest.approx([0.59, 0.58, 0.57])


def _random_raw(seed: int, sharpness: int, anchors: int = 2100) -> np.ndarray:
    """A plausible detector output: boxes anywhere in a 320 input, 3 classes, mostly low scores."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 320, (2, anchors))
    wh = rng.uniform(4, 120, (2, anchors))
    cls = rng.uniform(0, 1, (3, anchors)) ** sharpness
    return np.concatenate([xy, wh, cls]).astype(np.float32)


def _assert_equal_to_reference(det: nms.Detections, ref: np.ndarray) -> None:
    np.testing.assert_allclose(det.boxes, ref[:, :4], atol=1e-3)
    np.testing.assert_allclose(det.scores, ref[:, 4], atol=1e-6)
    np.testing.assert_array_equal(det.classes, ref[:, 5].astype(np.int32))


def test_decode_matches_ultralytics_nms_on_random_output():
    from ultralytics.utils.nms import non_max_suppression

    raw = _random_raw(3, 4)
    det = nms.decode(raw, 0.25, 0.7, 300)
    ref = non_max_suppression(torch.from_numpy(raw[None]), 0.25, 0.7, max_det=300)[0].numpy()
    assert len(det.scores) == len(ref) > 10
    _assert_equal_to_reference(det, ref)


def test_pad_and_unpad_round_trip():
    lb = geometry.plan(100, 100, 320).as_array()
    a = postprocess_one(_raw([[50, 50, 20, 20]], [[0.9]]), lb, 0.25, 0.7, 300)
    b = postprocess_one(_raw([[50, 50, 20, 20]], [[0.1]]), lb, 0.25, 0.7, 300)
    out = unpad(*pad_batch([a, b]))
    assert len(out[0].scores) == 1 and len(out[1].scores) == 0
    np.testing.assert_allclose(out[0].boxes[0], [12.5, 12.5, 18.75, 18.75], atol=1e-4)


def test_multi_label_decode_matches_ultralytics_validator_nms():
    from ultralytics.utils.nms import non_max_suppression

    raw = _random_raw(4, 6)
    det = nms.decode(raw, 0.001, 0.7, 300, multi_label=True)
    ref = non_max_suppression(torch.from_numpy(raw[None]), 0.001, 0.7, multi_label=True, max_det=300)[0].numpy()
    single = nms.decode(raw, 0.001, 0.7, 300)
    assert len(det.scores) == len(ref) == 300
    assert set(map(tuple, det.boxes.round(3).tolist())) != set(map(tuple, single.boxes.round(3).tolist()))
    _assert_equal_to_reference(det, ref)


def test_stats_diff_selects_models_and_averages_per_request():
    from yolo_triton.perf import stats

    def snap(count: int, executions: int, ns: int) -> dict:
        phases = {p: {"ns": ns} for p in stats.PHASES}
        return stats.snapshot({"model_stats": [{"name": "m", "execution_count": executions,
                                                "inference_stats": {"success": {"count": count}, **phases}}]})

    before, after = snap(10, 5, 1_000_000), snap(14, 7, 9_000_000)
    (row,) = stats.diff(before, after)
    assert (row.model, row.count, row.executions) == ("m", 4, 2)
    assert row.ms == {p: 2.0 for p in stats.PHASES}  # 8 ms of each phase over 4 requests
    assert stats.diff(before, after, []) == [], "an empty selection (a fused variant's stages) is no model"
    assert stats.diff(before, after, ["other"]) == []
