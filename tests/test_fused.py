"""The fused CPU variant (`yolov8n_ort_fused`): one python model (`pipeline_ort`) running letterbox,
ONNX Runtime and NMS, served by the real tritonserver next to the `yolov8n_ort` ensemble it must equal.

Both run the same functions on the same ONNX session settings, so their answers agree to float
precision, alone, in batched requests and when the server batches concurrent requests of mixed
sizes. (The GPU twin, `yolov8n_gpu_fused`, is tested in test_gpu.py.)
"""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
from conftest import sample_images
from test_serving import assert_same_detections

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient

FUSED = spec.variant("ort_fused")
ENSEMBLE = spec.variant("ort")


def assert_equal(got, want) -> None:  # noqa: ANN001
    """Row for row, in the server's order (score, then NMS order): same function, same numbers."""
    assert len(got.scores) == len(want.scores)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)


def _detect(url: str, model: str, image: np.ndarray, **options):  # noqa: ANN003, ANN202
    with DetectorClient(url, model=model, timeout_s=120) as c:
        return c.detect(image, **options).detections


def test_fused_is_the_default_and_the_staged_ensemble_is_served_too(server):
    """The fused pipeline reports its own per-stage times (custom metrics), so `yolov8n` can be the
    faster of the two; the staged ensemble stays callable by name."""
    assert FUSED.ensemble in server.plan.load and ENSEMBLE.ensemble in server.plan.load
    assert server.plan.alias.key == spec.variant("ort_int8_fused").key  # FP32's fused twin, gated (test_int8.py)
    with DetectorClient(server.url, model=FUSED.ensemble) as c:
        assert c.names == ("circle", "rectangle", "triangle")


def test_fused_equals_the_ensemble(server):
    images = list(sample_images().values())
    rng = np.random.default_rng(3)
    images += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(1, 1), (40, 1500), (3000, 4000)]]
    found = 0
    for image in images:
        for options in ({}, {"conf": 0.05, "iou": 0.5, "max_det": 3}, {"conf": 0.01, "multi_label": True}):
            want = _detect(server.url, ENSEMBLE.ensemble, image, **options)
            got = _detect(server.url, FUSED.ensemble, image, **options)
            assert_equal(got, want)
            found += len(want.scores)
    assert found > 50, "the comparison needs detections (the demo checkpoint)"


def test_fused_batches_mixed_sizes_like_single_requests(server):
    images = list(sample_images().values())
    images += [np.ascontiguousarray(im[: im.shape[0] // 2]) for im in images]
    alone = [_detect(server.url, FUSED.ensemble, im) for im in images]
    with cf.ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(lambda im: _detect(server.url, FUSED.ensemble, im), images * 2))
    for got, want in zip(together, alone * 2):
        assert_same_detections(got, want.boxes, want.scores, want.classes, iou_min=0.9999, score_tol=1e-5)
    with DetectorClient(server.url, model=FUSED.ensemble, timeout_s=120) as c:
        batch, _ = c.infer(np.stack([images[0], images[0][:, ::-1].copy()]), conf=0.3)
        for got, img in zip(batch, [images[0], images[0][:, ::-1].copy()]):
            want = c.detect(img, conf=0.3).detections
            assert_same_detections(got, want.boxes, want.scores, want.classes, iou_min=0.9999, score_tol=1e-6)
        stats = c.model_stats(FUSED.pipeline)["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_stats"]["success"]["count"]), "never batched"
