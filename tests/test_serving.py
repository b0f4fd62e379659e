"""The real tritonserver serving the ensemble over gRPC."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest
from conftest import sample_images

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU. Two zero-area boxes (clipped flat at an image border) have none; they count as
    the same box (1.0) when every coordinate is within half a pixel, else 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    close = (np.abs(a[:, None, :] - b[None, :, :]) <= 0.5).all(2)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), close.astype(np.float64))


def assert_same_detections(ours, boxes, scores, classes, iou_min=0.99, score_tol=1e-3):
    """Same count, and each detection has a reference detection of its class with IoU and score close.

    Matched by class and IoU rather than by position: two detections whose scores differ by
    less than the rounding can come back in either order (multi-label: one box, two classes).
    """
    assert len(ours.scores) == len(scores), f"{len(ours.scores)} served vs {len(scores)} reference"
    if not len(scores):
        return
    same_class = np.asarray(ours.classes)[:, None] == np.asarray(classes)[None, :]
    ious = np.where(same_class, iou_matrix(ours.boxes, boxes), -1.0)
    for i in range(len(scores)):
        j = int(np.argmax(ious[i]))
        assert ious[i, j] >= iou_min, f"detection {i} (class {ours.classes[i]}): best IoU {ious[i, j]:.4f}"
        assert abs(float(ours.scores[i]) - float(scores[j])) <= score_tol


@pytest.mark.parametrize(
    "shape", [(1080, 810), (720, 1280), (8, 8), (1, 1), (3000, 4000), (40, 1500), (640, 640)],
    ids=["portrait", "landscape", "tiny", "one-pixel", "large", "extreme-aspect", "square"],
)
def test_ensemble_answers_any_size(client, facts, shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    result = client.detect(image, conf=0.01)
    det = result.detections
    h, w = shape
    assert det.boxes.shape[1] == 4 and len(det.boxes) == len(det.scores) == len(det.classes)
    assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [0, 2]] <= w).all()
    assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [1, 3]] <= h).all()
    assert ((det.scores > 0.01) & (det.scores <= 1)).all()
    assert ((det.classes >= 0) & (det.classes < len(facts.names))).all()
    assert result.latency_ms > 0


def test_served_boxes_equal_ultralytics_predict(client, facts, ultralytics_model):
    """Same weights, same square letterbox (rect=False) on both sides."""
    total = 0
    for image in sample_images().values():
        ours = client.detect(image).detections
        ref = ultralytics_model.predict(image, imgsz=facts.imgsz, rect=False, conf=0.25, iou=0.7, device="cpu",
                                       verbose=False)[0]
        b = ref.boxes
        assert_same_detections(ours, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(int))
        total += len(ours.scores)
    assert total > 0, "the parity check needs weights that detect something"


def test_thresholds_are_per_request(client):
    image = next(iter(sample_images().values()))
    loose = client.detect(image, conf=0.05).detections
    default = client.detect(image).detections
    strict = client.detect(image, conf=0.8).detections
    one = client.detect(image, conf=0.05, max_det=1).detections
    assert len(loose.scores) >= len(default.scores) >= len(strict.scores)
    assert len(loose.scores) > len(strict.scores)
    assert (default.scores > spec.DEFAULT_CONF).all() and (strict.scores > 0.8).all()
    assert len(one.scores) == 1 and one.scores[0] == loose.scores[0]


def test_batched_request_equals_single_requests(client):
    image = next(iter(sample_images().values()))
    flipped = np.ascontiguousarray(image[:, ::-1])
    batch, _ = client.infer(np.stack([image, flipped, image]))
    for got, img in zip(batch, [image, flipped, image]):
        single = client.detect(img).detections
        assert_same_detections(got, single.boxes, single.scores, single.classes, iou_min=0.9999, score_tol=1e-6)


def test_concurrent_mixed_sizes_equal_single_requests(server):
    """Requests of different sizes batched together by the server give the answers they get alone."""
    images = list(sample_images().values())
    images += [np.ascontiguousarray(im[: im.shape[0] // 2]) for im in images]
    with DetectorClient(server.url, timeout_s=120) as c:
        alone = [c.detect(im).detections for im in images]
    def one(im):  # noqa: ANN001, ANN202
        with DetectorClient(server.url, timeout_s=120) as c:
            return c.detect(im).detections
    with cf.ThreadPoolExecutor(len(images)) as pool:
        together = list(pool.map(one, images * 2))
    for got, want in zip(together, alone * 2):
        assert_same_detections(got, want.boxes, want.scores, want.classes, iou_min=0.9999, score_tol=1e-5)


def test_alias_serves_the_fastest_variant_this_server_loads(server, client):
    """On a CPU server that is the fused CPU pipeline (spec.FASTEST_FIRST), INT8 since the demo
    checkpoint's INT8 gate passed at build time."""
    cfg = client.client.get_model_config(spec.ALIAS, as_json=True)["config"]
    loaded = [v.key for v in spec.VARIANTS if v.ensemble in server.plan.load]
    assert cfg["parameters"]["variant"]["string_value"] == min(loaded, key=spec.FASTEST_FIRST.index)
    assert cfg["parameters"]["variant"]["string_value"] == "ort_int8_fused", server.plan.why
    assert client.names == ("circle", "rectangle", "triangle")


def test_shared_memory_input_gives_the_same_detections(server, client):
    """Pixels handed over in a registered system shared-memory region instead of the gRPC message."""
    images = list(sample_images().values())
    with DetectorClient(server.url, model=client.model, timeout_s=60, shared_memory=True) as shm_client:
        for image in images + images[:1]:  # regrows the region for larger images, then reuses it
            got = shm_client.detect(image).detections
            want = client.detect(image).detections
            assert_same_detections(got, want.boxes, want.scores, want.classes, iou_min=0.9999, score_tol=1e-6)
        batch, _ = shm_client.infer(np.stack([images[0], images[0]]))
        assert len(batch) == 2 and len(batch[0].scores) == len(batch[1].scores) > 0
    status = client.client.get_system_shared_memory_status(as_json=True, headers=server.headers)
    assert not status.get("regions"), "the client unregisters its region on close"


def test_a_region_released_while_a_request_holds_it_is_unregistered_after_the_answer(server, client):
    """Triton refuses to unregister a region a request still holds ("currently in use"); release
    waits that out instead of leaving the region registered on the server for good."""
    from yolo_triton.client.detector import OUTPUTS, ShmRegion, build_inputs, parse_outputs

    image = next(iter(sample_images().values()))
    images = np.stack([image] * 32)  # an execute long enough to still be running at the release
    region = ShmRegion.create(client.client, images.nbytes, client.headers)
    answered = threading.Event()
    got: list = []

    def done(result, error) -> None:  # noqa: ANN001 - tritonclient's callback arguments
        got.append(error if error is not None else parse_outputs(result))
        answered.set()

    client.client.async_infer(client.model, build_inputs(images, image_input=region.input(images)), done,
                              outputs=OUTPUTS, client_timeout=120)
    time.sleep(0.2)  # the request has reached the server and holds the region
    region.release(client.client, wait_s=60)
    assert answered.wait(120)
    assert not isinstance(got[0], Exception), got[0]
    want = client.detect(image).detections
    for det in got[0]:
        assert_same_detections(det, want.boxes, want.scores, want.classes, iou_min=0.99, score_tol=1e-3)
    status = client.client.get_system_shared_memory_status(as_json=True, headers=server.headers)
    assert region.name not in status.get("regions", {}), "released while in use, the region stays registered"


def test_shared_memory_region_holds_exactly_the_images_written(client):
    """One copy straight into the mapping: what the server reads is the caller's pixels."""
    from yolo_triton.client.detector import ShmRegion, _shm_module

    rng = np.random.default_rng(5)
    region = ShmRegion.create(client.client, 1 << 16, client.headers)
    try:
        for shape in ((1, 40, 30, 3), (2, 20, 50, 3)):
            images = rng.integers(0, 256, shape, dtype=np.uint8)
            inp = region.input(images)
            assert inp.shape() == list(shape)
            mapped = _shm_module().get_contents_as_numpy(region.handle, np.uint8, list(shape))
            np.testing.assert_array_equal(mapped, images)
        with pytest.raises(ValueError, match="do not fit"):
            region.input(np.zeros((1, 200, 200, 3), np.uint8))
    finally:
        region.release(client.client)
    with pytest.raises(ValueError, match="was released"):
        region.input(np.zeros((1, 4, 4, 3), np.uint8))
