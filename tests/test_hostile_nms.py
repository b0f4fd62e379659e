"""A legal but hostile request against the real server: NMS must not hold the CPU pipeline.

64 images of 1x1 px (192 bytes of payload) with CONF_THRESHOLD 0, IOU_THRESHOLD 1, MAX_DETECTIONS
10000 and MULTI_LABEL: every anchor is a candidate in every class (6300 per image with the demo
checkpoint at 320) and nothing is suppressed. The old per-box Python loop held `yolov8n_ort` and
`yolov8n_ort_fused` for 32-42 s while every other client waited. Now NMS is vectorised and each
image's NMS work is counted against a budget (`nms.NMS_PAIRS_PER_ANCHOR`): the request must be
answered (served, or refused with a message naming the fix) within 2.5x the time the same batch
takes with default options, an ordinary request sent meanwhile within 5 s, and the server must
answer that ordinary request afterwards exactly as before.
"""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import sample_images
from tritonclient.utils import InferenceServerException

from yolo_triton import spec
from yolo_triton.client.detector import OUTPUTS, DetectorClient, build_inputs, parse_outputs

MODELS = [spec.variant("ort").ensemble, spec.variant("ort_fused").ensemble]
ATTACK = {"conf": 0.0, "iou": 1.0, "max_det": 10_000, "multi_label": True}
# Served, and the heaviest legal single-label request: every anchor kept (2100 boxes per image).
HEAVY_SERVED = {"conf": 0.0, "iou": 1.0, "max_det": 10_000, "multi_label": False}
# The attack cut down to just inside the budget (693 of 800 pairs per anchor with the demo checkpoint
# at 320, served): the real worst case the bound allows. Served or refused, it must be as quick.
NEAR_BUDGET = {"conf": 0.0, "iou": 1.0, "max_det": 850, "multi_label": True}
RATIO = 2.5  # the attack may cost at most this many times the same batch with default options
ORDINARY_S = 5.0  # an ordinary request sent while the attack runs is answered within this


def tiny_batch() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (spec.MAX_BATCH, 1, 1, 3), dtype=np.uint8)


def send(url: str, model: str, images: np.ndarray, **options) -> tuple[float, object]:  # noqa: ANN003
    """Seconds until the answer, and the answer: detections per image or the server's exception."""
    c = grpcclient.InferenceServerClient(url)
    try:
        start = time.perf_counter()
        try:
            result = parse_outputs(c.infer(model, build_inputs(images, **options), outputs=OUTPUTS,
                                           client_timeout=300))
        except InferenceServerException as e:
            result = e
        return time.perf_counter() - start, result
    finally:
        c.close()


@pytest.fixture(scope="module")
def ordinary(server) -> tuple[np.ndarray, object]:
    """The sample photo with the most detections and what the server answers for it."""
    with DetectorClient(server.url, model=MODELS[0], timeout_s=60) as c:
        image = max(sample_images().values(), key=lambda im: len(c.detect(im).detections.scores))
        det = c.detect(image).detections
    assert len(det.scores) > 0
    return image, det


def assert_same(got, want) -> None:  # noqa: ANN001
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def describe(result: object) -> str:
    if isinstance(result, InferenceServerException):
        found = re.search(r"gives (\d+) candidates", result.message() or "")
        return f"refused ({result.status()}), {found.group(1) if found else '?'} candidates per image"
    counts = [len(d.scores) for d in result]
    return f"served, {min(counts)}-{max(counts)} boxes per image"


def check_answer(result: object) -> None:
    """Served in full, or refused as INVALID_ARGUMENT with a message that names the fix."""
    if isinstance(result, InferenceServerException):
        message = result.message() or ""
        assert result.status() == "StatusCode.INVALID_ARGUMENT", message
        for words in ("NMS over budget", "MULTI_LABEL", "CONF_THRESHOLD 0", "raise CONF_THRESHOLD",
                      "lower MAX_DETECTIONS"):
            assert words in message, (words, message)
    else:
        assert len(result) == spec.MAX_BATCH and all(len(d.scores) > 0 for d in result)


def best_of(tries: int, url: str, model: str, images: np.ndarray, **options) -> tuple[float, object]:  # noqa: ANN003
    """The quickest of a few runs: on this shared 2-core machine one run in three takes 40-100%
    longer whatever it runs (the baseline's runs show it); the bound is about the server's work."""
    runs = [send(url, model, images, **options) for _ in range(tries)]
    return min(runs, key=lambda r: r[0])


@pytest.mark.parametrize("model", MODELS)
def test_hostile_nms_request_is_bounded_and_others_are_served(server, ordinary, model):
    images = tiny_batch()
    assert images.nbytes == 192
    image, expected = ordinary
    with DetectorClient(server.url, model=model, timeout_s=60) as c:  # this model's own answer (and warm-up)
        before = c.detect(image).detections
    assert_same(before, expected)

    baselines = sorted(send(server.url, model, images)[0] for _ in range(3))
    baseline = baselines[1]  # the median

    # The attack, with an ordinary request sent while it is in flight.
    outcome: dict[str, object] = {}

    def attack() -> None:
        outcome["seconds"], outcome["result"] = send(server.url, model, images, **ATTACK)
        outcome["ended"] = time.perf_counter()

    thread = threading.Thread(target=attack)
    thread.start()
    time.sleep(0.2)  # the attack is in the server (its network alone takes ~1 s): the ordinary one lands behind it
    sent = time.perf_counter()
    with DetectorClient(server.url, model=model, timeout_s=60) as c:
        during = c.detect(image).detections
    ordinary_s = time.perf_counter() - sent
    thread.join(timeout=600)
    assert not thread.is_alive(), "the attack was never answered"
    in_flight = outcome["ended"] > sent
    alone_s, alone = send(server.url, model, images, **ATTACK)
    attack_s = min(outcome["seconds"], alone_s)

    heavy_s, heavy = best_of(2, server.url, model, images, **HEAVY_SERVED)
    near_s, near = best_of(2, server.url, model, images, **NEAR_BUDGET)

    print(f"\n{model}: baseline (64 x 1x1 px, default options) {baseline:.2f} s "
          f"(runs {', '.join(f'{b:.2f}' for b in baselines)}); "
          f"attack {ATTACK} {attack_s:.2f} s = {attack_s / baseline:.2f}x baseline "
          f"(with the ordinary request {outcome['seconds']:.2f} s, alone {alone_s:.2f} s), "
          f"{describe(outcome['result'])}; "
          f"ordinary request during the attack {ordinary_s:.2f} s "
          f"(sent {'before' if in_flight else 'after'} the attack's answer); "
          f"heaviest served single-label {heavy_s:.2f} s = {heavy_s / baseline:.2f}x baseline, {describe(heavy)}; "
          f"just inside the budget {NEAR_BUDGET} {near_s:.2f} s = {near_s / baseline:.2f}x baseline, "
          f"{describe(near)}")

    check_answer(outcome["result"])
    check_answer(alone)
    assert attack_s <= RATIO * baseline, f"attack {attack_s:.2f} s vs baseline {baseline:.2f} s"
    assert in_flight, "the ordinary request must be sent while the attack is in flight"
    assert ordinary_s <= ORDINARY_S, f"ordinary request waited {ordinary_s:.2f} s behind the attack"
    assert_same(during, before)

    assert not isinstance(heavy, InferenceServerException), heavy.message()
    assert all(len(d.scores) == 2100 for d in heavy), "every anchor kept: the budget never truncates"
    assert heavy_s <= RATIO * baseline, f"heaviest served {heavy_s:.2f} s vs baseline {baseline:.2f} s"
    if not isinstance(near, InferenceServerException):
        assert all(len(d.scores) == NEAR_BUDGET["max_det"] for d in near)
    assert near_s <= RATIO * baseline, f"near the budget {near_s:.2f} s vs baseline {baseline:.2f} s"

    live = grpcclient.InferenceServerClient(server.url)
    try:
        assert live.is_server_live() and live.is_model_ready(model)
    finally:
        live.close()
    with DetectorClient(server.url, model=model, timeout_s=60) as c:
        assert_same(c.detect(image).detections, before)
