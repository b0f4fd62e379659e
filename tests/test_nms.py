"""The vectorised NMS against torchvision and a plain greedy loop, bit for bit, and its work budget.

`nms.nms` / `nms.batched_nms` / `nms.decode` must keep exactly the boxes (and in exactly the
order) that `torchvision.ops.nms` keeps on the same float32 inputs, which is what Ultralytics'
`non_max_suppression` runs: ties, duplicates, zero-area boxes, several classes, every threshold
a request may send, max_det on both sides of the kept count, more than MAX_NMS candidates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from yolo_triton.pipeline import nms
from yolo_triton.pipeline.postprocess import postprocess_batch
from yolo_triton.pipeline.validation import InputError

THRESHOLDS = [0.0, 0.45, 0.7, 1.0]


def reference_nms(boxes: np.ndarray, scores: np.ndarray, t: float) -> list[int]:
    """The textbook greedy loop: best remaining box is kept, every box with IoU > t against it is
    dropped. Python's sort is stable (ties keep input order); float32 math throughout."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float32) for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(len(scores), bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in order:
            if not alive[i]:
                continue
            keep.append(i)
            alive[i] = False
            w = np.maximum(0, np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
            h = np.maximum(0, np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
            inter = w * h
            alive &= ~(inter / (area[i] + area - inter) > t)
    return keep


def torchvision_nms(boxes: np.ndarray, scores: np.ndarray, t: float) -> list[int]:
    return torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), t).tolist()


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores of one of several kinds, chosen by seed: continuous coordinates in clusters,
    a coarse integer grid (exact duplicates, equal scores, zero-area boxes), nested boxes."""
    rng = np.random.default_rng(seed)
    kind = seed % 4
    n = int(rng.integers(1, 1500 if kind == 0 else 600))
    if kind == 0:  # clustered, continuous: real suppression chains
        centres = rng.uniform(0, 640, (int(rng.integers(1, 30)), 2))
        xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 8, (n, 2))
        wh = rng.uniform(2, 120, (n, 2))
        scores = rng.random(n)
    elif kind == 1:  # integer grid: duplicates and ties everywhere, some zero width or height
        xy = rng.integers(0, 12, (n, 2)) * 4.0
        wh = rng.integers(0, 5, (n, 2)) * 4.0
        scores = rng.integers(0, 6, n) / 5
    elif kind == 2:  # nested boxes around one point: every pair overlaps
        wh = rng.uniform(1, 300, (n, 2))
        xy = 320 - wh * rng.uniform(0, 1, (n, 2))
        scores = rng.random(n) ** 3
    else:  # few distinct scores, continuous boxes, some exact copies
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(0, 60, (n, 2))
        copies = rng.integers(0, n, n // 4)
        xy[: len(copies)], wh[: len(copies)] = xy[copies], wh[copies]
        scores = rng.integers(0, 3, n) / 2
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, scores.astype(np.float32)


@pytest.mark.parametrize("seed", range(48))
def test_nms_equals_torchvision_and_the_plain_loop(seed):
    boxes, scores = random_case(seed)
    for t in THRESHOLDS:
        want = torchvision_nms(boxes, scores, t)
        assert reference_nms(boxes, scores, t) == want, "the test's own reference disagrees with torchvision"
        got = nms.nms(boxes, scores, t)
        assert got.dtype == np.int64 or got.dtype == np.intp
        assert got.tolist() == want, (seed, t)
        for max_det in (1, 7, max(1, len(want) // 2), len(want), len(want) + 5):
            assert nms.nms(boxes, scores, t, max_det).tolist() == want[:max_det], (seed, t, max_det)


def test_nms_ties_duplicates_and_degenerate_boxes():
    boxes = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10],  # three copies, equal scores
         [5, 5, 5, 5], [5, 5, 5, 5],  # zero-area points: IoU 0/0 is NaN, never suppresses
         [0, 0, 0, 10], [20, 20, 30, 30], [20, 20, 30, 30]],
        np.float32,
    )
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.9, 0.5, 0.3, 0.3], np.float32)
    for t in THRESHOLDS:
        want = torchvision_nms(boxes, scores, t)
        assert nms.nms(boxes, scores, t).tolist() == want == reference_nms(boxes, scores, t)
    assert nms.nms(boxes, scores, 0.5).tolist() == [3, 4, 0, 5, 6]


def test_nms_with_nan_coordinates_never_suppresses_through_them():
    """NaN IoU compares False, in the plain loop and in the vectorised one (torchvision's C++
    min/max treat NaN differently, so only the loop is the reference here)."""
    boxes, scores = random_case(5)
    boxes[::7, 0] = np.nan
    boxes[3::11, 3] = np.nan
    for t in THRESHOLDS:
        assert nms.nms(boxes, scores, t).tolist() == reference_nms(boxes, scores, t)


def test_nms_long_suppression_chains_inside_a_block():
    """Each box suppresses the next (IoU 0.6) but not the one after (0.33): greedy keeps every
    other box, a chain as long as the block (Cluster-NMS would need one pass per link)."""
    n = 3 * nms.NMS_BLOCK + 17
    i = np.arange(n)
    x = (i % 300) * 2.5
    boxes = np.stack([x, (i // 300) * 20.0, x + 10, (i // 300) * 20.0 + 10], 1).astype(np.float32)
    scores = np.linspace(1, 0.1, n).astype(np.float32)
    got = nms.nms(boxes, scores, 0.45).tolist()
    assert got == torchvision_nms(boxes, scores, 0.45) and len(got) < n * 0.6


def _classes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, int(rng.integers(1, 9)), n)


@pytest.mark.parametrize("seed", range(24))
def test_batched_nms_equals_torchvision_batched_nms(seed):
    """Below 1000 boxes torchvision offsets each class by max coordinate + 1 (exact on the integer
    grid, ties allowed); above, it runs nms per class and sorts (not stably: tie-free scores)."""
    rng = np.random.default_rng(100 + seed)
    if seed % 2:
        boxes, scores = random_case(4 * seed + 1)  # integer grid
    else:
        boxes, _ = random_case(4 * seed)
        scores = rng.permutation(len(boxes)).astype(np.float32) / len(boxes)
    classes = _classes(rng, len(boxes))
    for t in THRESHOLDS:
        want = torchvision.ops.batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), t
        ).tolist()
        assert nms.batched_nms(boxes, scores, classes, t).tolist() == want, (seed, t)
        for max_det in (1, max(1, len(want) // 3), len(want) + 1):
            assert nms.batched_nms(boxes, scores, classes, t, max_det).tolist() == want[:max_det]


def reference_decode(raw: np.ndarray, conf: float, iou: float, max_det: int, multi_label: bool) -> nms.Detections:
    """Ultralytics' recipe written out: candidates over conf, the MAX_NMS best (stable), boxes
    offset by class * 7680 in float32, torchvision NMS, the first max_det."""
    cls_scores = raw[4:]
    if multi_label:
        anchors, classes = np.nonzero(cls_scores.T > conf)
        scores = cls_scores[classes, anchors]
    else:
        best = cls_scores.argmax(0)
        all_scores = cls_scores[best, np.arange(raw.shape[1])]
        anchors = np.flatnonzero(all_scores > conf)
        scores, classes = all_scores[anchors], best[anchors]
    top = np.argsort(-scores, kind="stable")[: nms.MAX_NMS]
    anchors, scores, classes = anchors[top], scores[top].astype(np.float32), classes[top].astype(np.int32)
    xywh = raw[:4, anchors].T.astype(np.float32)
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    offset = boxes + (classes[:, None] * nms.MAX_WH).astype(np.float32)
    kept = torchvision_nms(offset, scores, iou)[:max_det]
    return nms.Detections(boxes[kept], scores[kept], classes[kept])


def detector_raw(seed: int, nc: int, anchors: int, size: float = 640, ties: bool = False) -> np.ndarray:
    """A detector-like output: boxes clustered around objects; `ties`: scores on a coarse grid."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, size, (15, 2))
    k = rng.integers(0, len(centres), anchors)
    xy = centres[k].T + rng.normal(0, 6, (2, anchors))
    wh = rng.uniform(4, 150, (2, anchors))
    cls = rng.random((nc, anchors)) ** 4
    if ties:
        cls = np.round(cls * 20) / 20
    return np.concatenate([xy, wh, cls]).astype(np.float32)


def assert_same(got: nms.Detections, want: nms.Detections) -> None:
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.boxes, want.boxes)


@pytest.mark.parametrize(
    "seed,nc,anchors,size,ties",
    [(0, 3, 2100, 320, False), (1, 3, 2100, 320, True), (2, 80, 8400, 640, False), (3, 80, 8400, 640, True),
     (4, 1, 2100, 320, True), (5, 20, 2100, 640, False), (6, 3, 2100, 30000, False)],
    ids=["nc3", "nc3-ties", "nc80", "nc80-ties", "nc1-ties", "nc20", "boxes-wider-than-the-class-offset"],
)
def test_decode_equals_the_torchvision_recipe(seed, nc, anchors, size, ties):
    """Single and multi label, every threshold, max_det on both sides of the kept count; nc80 with
    MULTI_LABEL and CONF 0 gives 672000 candidates (> MAX_NMS). Boxes spread over 30000 px overlap
    across the 7680-px class offset: then NMS runs over all classes at once, as Ultralytics' does."""
    raw = detector_raw(seed, nc, anchors, size, ties)
    keep, _, classes = nms._candidates(raw, 0.0, True)
    offset = nms.xywh2xyxy(raw[:4, keep].T) + (classes[:, None] * nms.MAX_WH).astype(np.float32)
    assert nms._classes_apart(offset, classes) == (size < nms.MAX_WH), "both NMS paths are exercised"
    confs = (0.0, 0.05, 0.25) if nc * anchors < 50_000 else (0.0, 0.25)  # torchvision's loop takes ~1 s a case
    for multi_label in (False, True):
        for conf in confs:
            for t in THRESHOLDS:
                want = reference_decode(raw, conf, t, nms.MAX_NMS, multi_label)  # max_det only truncates
                for max_det in (5, 300, 10000):
                    got = nms.decode(raw, conf, t, max_det, multi_label)
                    assert_same(got, nms.Detections(*(a[:max_det] for a in want)))


@pytest.mark.parametrize("nc,conf,per_class", [(80, 0.999, False), (3, 0.0, True)],
                         ids=["crowded-few-boxes-many-classes", "many-boxes-few-classes"])
def test_one_pass_and_per_class_passes_keep_the_same_boxes(monkeypatch, nc, conf, per_class):
    """decode picks per-class passes or one pass over the class-offset boxes by what each is
    charged; both keep the same boxes when the classes are apart, so the choice is speed only."""
    raw = detector_raw(11, nc, 8400, 640)
    keep, _, classes = nms._candidates(raw, conf, False)
    assert nms._per_class_cheaper(classes) is per_class, (keep.size, len(np.unique(classes)))
    chosen = nms.decode(raw, conf, 0.7, 300)
    assert len(chosen.scores) > 10
    monkeypatch.setattr(nms, "_per_class_cheaper", lambda _classes: not per_class)
    assert_same(chosen, nms.decode(raw, conf, 0.7, 300))


def test_candidates_take_each_anchors_first_best_class_and_drop_nan_columns():
    raw = np.zeros((4 + 3, 5), np.float32)
    raw[4:] = [[0.1, 0.9, 0.5, np.nan, 0.3], [0.6, 0.9, 0.2, 0.9, 0.3], [0.6, 0.1, 0.7, 0.2, 0.3]]
    keep, scores, classes = nms._candidates(raw, 0.25, False)
    assert keep.tolist() == [0, 1, 2, 4]  # anchor 3 has a NaN score: never a candidate
    assert classes.tolist() == [1, 0, 2, 0]  # ties go to the first class, as argmax does
    np.testing.assert_array_equal(scores, np.float32([0.6, 0.9, 0.7, 0.3]))


@pytest.mark.parametrize("seed", range(12))
def test_best_candidates_equal_the_stable_sort(seed):
    """decode's MAX_NMS cut picks, without sorting everything, what a stable sort's first k are:
    ties at the cut are taken in input order."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    scores = (rng.integers(0, [2, 10, 1000, 10**6][seed % 4], n) / 7).astype(np.float32)
    for k in (1, 2, n // 3 + 1, n - 1, n, n + 1):
        if k >= 1:
            assert nms._best(scores, k).tolist() == np.argsort(-scores, kind="stable")[:k].tolist(), (seed, k)


def test_decode_beyond_max_nms_candidates_equals_ultralytics():
    from ultralytics.utils.nms import non_max_suppression

    nc, anchors = 20, 2100  # MULTI_LABEL, CONF 0: 42000 candidates, distinct scores (no tie at the cut)
    raw = detector_raw(7, nc, anchors)
    raw[4:] = (np.random.default_rng(7).permutation(nc * anchors).reshape(nc, anchors) + 1) / (nc * anchors + 1)
    for t in (0.45, 0.7):
        det = nms.decode(raw, 0.0, t, 300, multi_label=True)
        ref = non_max_suppression(torch.from_numpy(raw[None]), 0.0, t, multi_label=True, max_det=300)[0].numpy()
        assert len(det.scores) == len(ref) == 300
        np.testing.assert_allclose(det.boxes, ref[:, :4], atol=1e-3)
        np.testing.assert_array_equal(det.scores, ref[:, 4])
        np.testing.assert_array_equal(det.classes, ref[:, 5].astype(np.int32))


# --- the work budget ---------------------------------------------------------------------------


def flood_raw(anchors: int = 2100, nc: int = 3) -> np.ndarray:
    """What the network answers for a uniform image: every anchor scores in every class, boxes
    large and overlapping everywhere, so with MULTI_LABEL, CONF 0 and IOU 1 nothing is suppressed."""
    rng = np.random.default_rng(11)
    xy = rng.uniform(0, 320, (2, anchors))
    wh = rng.uniform(10, 500, (2, anchors))
    return np.concatenate([xy, wh, rng.uniform(0.01, 0.5, (nc, anchors))]).astype(np.float32)


def test_budget_refuses_the_flood_with_a_message_naming_the_fix():
    raw = flood_raw()
    budget = nms.PairBudget.for_anchors(raw.shape[1])
    with pytest.raises(nms.NmsBudgetExceeded) as err:
        nms.decode(raw, 0.0, 1.0, 10000, multi_label=True, budget=budget)
    message = str(err.value)
    for words in ("MULTI_LABEL", "CONF_THRESHOLD 0", "6300 candidates", "IOU_THRESHOLD 1", "MAX_DETECTIONS 10000",
                  f"{budget.total} pairwise IoU", "raise CONF_THRESHOLD", "lower MAX_DETECTIONS"):
        assert words in message, (words, message)
    assert isinstance(err.value, InputError), "the python models answer InputError with INVALID_ARG"
    assert budget.spent <= budget.total, "the work is checked before it is done"
    assert budget.spent > budget.total * 0.9, "counted work, deterministic: spent nearly all of it"


def test_budget_is_counted_and_reproducible():
    raw = flood_raw()
    spent = []
    for _ in range(2):
        budget = nms.PairBudget(10**12)
        nms.decode(raw, 0.0, 1.0, 10000, multi_label=True, budget=budget)
        spent.append(budget.spent)
    assert spent[0] == spent[1] > nms.NMS_PAIRS_PER_ANCHOR * raw.shape[1]
    # Just enough is enough: the same request is served with a budget of exactly what it needs.
    det = nms.decode(raw, 0.0, 1.0, 10000, multi_label=True, budget=nms.PairBudget(spent[0]))
    assert len(det.scores) == 6300
    with pytest.raises(nms.NmsBudgetExceeded):
        nms.decode(raw, 0.0, 1.0, 10000, multi_label=True, budget=nms.PairBudget(spent[0] - 1))


@pytest.mark.parametrize(
    "options",
    [(0.25, 0.7, 300, False), (0.001, 0.7, 300, True), (0.0, 0.7, 300, True), (0.0, 1.0, 10000, False)],
    ids=["predict-defaults", "validator", "multi-label-conf0-maxdet300", "single-label-conf0-iou1-maxdet10000"],
)
def test_budget_serves_ordinary_and_heavy_legal_options(options):
    """Served bit for bit as without a budget: the budget refuses, it never truncates."""
    raw = flood_raw()
    budget = nms.PairBudget.for_anchors(raw.shape[1])
    assert_same(nms.decode(raw, *options, budget=budget), nms.decode(raw, *options))
    assert budget.spent < budget.total


def test_postprocess_batch_refuses_the_request_and_names_the_image():
    raw = np.stack([flood_raw()] * 2)
    lb = np.tile(np.array([1, 1, 0, 0, 320, 320], np.float32), (2, 1))
    raw[0, 4:] = 0.0  # the first image has no candidate above CONF 0
    with pytest.raises(InputError, match="image 1 of 2: NMS over budget"):
        postprocess_batch(raw, lb, [(0.0, 1.0, 10000)] * 2, [True, True])
    out = postprocess_batch(raw, lb, [(0.0, 1.0, 10000)] * 2, [True, True], bounded=False)
    assert out[3].ravel().tolist() == [0, 6300], "unbounded (offline decoding): everything, never truncated"
