"""The GPU's fixed-size NMS (pipeline.torch_nms) against the dynamic path it replaces, bit for bit.

`torch_decode` is itself held to `nms.decode`, the NumPy definition, and through it to
Ultralytics and torchvision (tests/test_gpu.py, tests/test_nms.py). These run on CPU tensors, so
CI guards the GPU math; tests/test_gpu.py repeats the crowded case on CUDA where there is one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo_triton.pipeline import geometry, torch_decode, torch_nms
from yolo_triton.pipeline.nms import Detections

CUDA = torch.cuda.is_available()
# On the GPU where there is one; on CPU tensors otherwise, the kernels in Triton's interpreter (conftest.py).
DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")
SIZES = ((1080, 810), (100, 1500), (640, 640), (33, 47))


def raw_batch(seed: int, n: int, nc: int = 80, anchors: int = 8400, size: int = 640, clusters: int = 40,
              share: float = 0.06) -> np.ndarray:
    """Crowded detector-like output: boxes around many objects, overlapping chains of candidates.

    Every score is below 0.2 but a `share` of the anchors, which get one class in [0.2, 1): a
    few hundred candidates at CONF 0.25 (bus.jpg with the crowded checkpoint has 179)."""
    rng = np.random.default_rng(seed)
    raw = np.zeros((n, 4 + nc, anchors), np.float32)
    for i in range(n):
        centers = rng.uniform(0, size, (clusters, 2))
        k = rng.integers(0, clusters, anchors)
        raw[i, 0] = centers[k, 0] + rng.normal(0, 8, anchors)
        raw[i, 1] = centers[k, 1] + rng.normal(0, 8, anchors)
        raw[i, 2:4] = rng.uniform(10, 160, (2, anchors))
        raw[i, 4:] = 0.2 * rng.random((nc, anchors)).astype(np.float32) ** 4
        hot = np.flatnonzero(rng.random(anchors) < share)
        raw[i, 4 + rng.integers(0, nc, hot.size), hot] = rng.uniform(0.2, 1, hot.size)
    return raw


def rows_for(n: int, size: int = 640) -> np.ndarray:
    return np.stack([geometry.plan(*SIZES[i % len(SIZES)], size).as_array() for i in range(n)])


def assert_identical(got: list[Detections], want: list[Detections]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.array_equal(g.classes, w.classes)
        assert np.array_equal(g.scores, w.scores)
        assert np.array_equal(g.boxes, w.boxes)


def both(raw: np.ndarray, limits: list[tuple[float, float, int]], multi: list[bool] | None = None,
         k: int = torch_nms.CANDIDATES) -> tuple[list[Detections], list[Detections]]:
    """(fixed path, dynamic path) on the test device."""
    t = torch.from_numpy(raw).to(DEVICE)
    rows = rows_for(len(raw))
    return (torch_nms.postprocess_batch(t, rows, limits, multi, k=k),
            torch_decode.postprocess_batch(t, rows, limits, multi))


def fixed(raw: np.ndarray, limits: list[tuple[float, float, int]], k: int = torch_nms.CANDIDATES,
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fixed_nms`'s table on the test device, unpacked: (rows, counts, exact)."""
    rows = rows_for(len(raw))
    options = np.array([torch_nms.options_row(lim, row) for lim, row in zip(limits, rows)], np.float32)
    table = torch_nms.fixed_nms(torch.from_numpy(raw).to(DEVICE), None, torch.from_numpy(options).to(DEVICE), k)
    return torch_nms.unpack(table.cpu().numpy(), (table.shape[1] - torch_nms.HEADER) // torch_nms.ROW)


@pytest.mark.parametrize("seed", range(4))
def test_per_image_thresholds_equal_the_dynamic_path(seed):
    raw = raw_batch(seed, 4)
    limits = [(0.25, 0.7, 300), (0.3, 0.5, 20), (0.4, 0.45, 300), (0.95, 0.7, 300)]
    assert fixed(raw, limits)[2].all(), "every image must take the fixed path here"
    got, want = both(raw, limits)
    assert_identical(got, want)
    assert sum(len(d.scores) for d in want) > 100, "the case must exercise NMS"
    assert len(want[1].scores) == 20, "max_det must cut"


def test_ties_keep_anchor_order():
    """Equal scores on overlapping boxes: which one survives depends on the tie order."""
    raw = raw_batch(7, 2, nc=3, anchors=2100, clusters=6)
    raw[:, 4:] = np.round(raw[:, 4:] * 8) / 8  # a few distinct scores: ties everywhere
    limits = [(0.2, 0.6, 300), (0.3, 0.7, 300)]
    assert fixed(raw, limits)[2].all()
    got, want = both(raw, limits)
    assert_identical(got, want)
    assert len(np.unique(want[0].scores)) < len(want[0].scores), "ties must be present"


@pytest.mark.parametrize("flags", [(True, True), (True, False)], ids=["all-multi", "mixed"])
def test_multi_label_batches_are_answered_as_numpy_answers_each_image(flags):
    """MULTI_LABEL's anchors x classes candidates go to the dynamic path, whole batch: each image
    as `nms.decode` + `geometry.unletterbox` (the NumPy definition) answers it, flag by flag."""
    from yolo_triton.pipeline.postprocess import postprocess_one

    raw = raw_batch(11, 2, nc=3, anchors=2100, clusters=8)
    raw[:, 4:] = raw[:, 4:] ** 0.5  # several classes above threshold per anchor
    limits = [(0.4, 0.6, 300), (0.42, 0.7, 100)]
    rows = rows_for(len(raw))
    got = torch_nms.postprocess_batch(torch.from_numpy(raw).to(DEVICE), rows, limits, list(flags))
    for i, (g, lim, flag) in enumerate(zip(got, limits, flags)):
        want = postprocess_one(raw[i], rows[i], *lim, flag)
        assert len(want.scores) > 20 and np.array_equal(g.classes, want.classes), i
        np.testing.assert_array_equal(g.scores, want.scores)
        np.testing.assert_allclose(g.boxes, want.boxes, atol=1e-3)  # torch_decode on CUDA: float64 offsets
    assert len(got[0].scores) > len(np.unique(got[0].boxes, axis=0)), "several classes kept for one box"


def test_too_many_candidates_go_to_the_dynamic_path():
    """Past k candidates the image is flagged and answered exactly, never truncated."""
    raw = raw_batch(3, 2)
    limits = [(0.0005, 0.7, 300), (0.25, 0.7, 300)]
    assert fixed(raw, limits, k=768)[2].tolist() == [False, True]
    got, want = both(raw, limits, k=768)
    assert_identical(got, want)


@pytest.mark.parametrize("n", [40, 100])
def test_a_chain_across_blocks_is_resolved_greedily(n):
    """A chain of boxes, each overlapping the next: greedy keeps every other one, and a box it
    drops suppresses nothing. The scan goes 32 candidates a block, so chains longer than a block
    check that suppression crosses blocks only from kept boxes."""
    raw = np.zeros((1, 5, 128), np.float32)
    raw[0, 0, :n] = 100 + 10 * np.arange(n)  # centres 10 px apart, width 40: IoU 0.6 with the next one
    raw[0, 1, :n], raw[0, 2, :n], raw[0, 3, :n] = 100, 40, 40
    raw[0, 4, :n] = np.linspace(0.9, 0.5, n)
    limits = [(0.25, 0.5, 300)]
    assert fixed(raw, limits)[2].tolist() == [True]
    got, want = both(raw, limits)
    assert_identical(got, want)
    assert len(want[0].scores) == n // 2


def test_max_detections_stops_the_scan_at_any_rank():
    """MAX_DETECTIONS anywhere in a block, at a block's end, or past what there is."""
    raw = raw_batch(9, 1)
    for max_det in (0, 1, 31, 32, 33, 64, 1000):
        got, want = both(raw, [(0.25, 0.7, max_det)])
        assert_identical(got, want)
    assert len(want[0].scores) > 64


def test_empty_and_single_candidate_images():
    raw = raw_batch(5, 3, nc=3, anchors=2100)
    limits = [(1.0, 0.7, 300), (0.9999, 0.7, 300), (0.3, 0.7, 0)]
    got, want = both(raw, limits)
    assert_identical(got, want)
    assert len(got[0].scores) == 0 and got[0].boxes.shape == (0, 4) and len(got[2].scores) == 0


needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU visible to torch (none here)")


@needs_cuda
def test_on_cuda_equals_the_dynamic_path():
    raw = raw_batch(21, 8)
    limits = [(0.25, 0.7, 300), (0.3, 0.5, 20), (0.4, 0.45, 300), (0.95, 0.7, 300)] * 2
    t = torch.from_numpy(raw).cuda()
    rows = rows_for(len(raw))
    assert_identical(torch_nms.postprocess_batch(t, rows, limits), torch_decode.postprocess_batch(t, rows, limits))
    multi = [True, False] * 4
    assert_identical(torch_nms.postprocess_batch(t, rows, limits, multi),
                     torch_decode.postprocess_batch(t, rows, limits, multi))


@needs_cuda
def test_graphed_nms_replays_what_the_eager_nms_computes():
    """Replays read the network graph's static buffers as they are at the replay, and give the
    eager `fixed_nms` rows for the images asked about."""
    from yolo_triton.pipeline import torch_network

    device = torch.device("cuda", 0)
    static = {b: torch_network.network_tail(torch.zeros((b, 84, 8400), device=device)) for b in (1, 4)}
    graphed = torch_nms.GraphedNms(static, device)
    limits = [(0.25, 0.7, 300), (0.3, 0.5, 20), (0.95, 0.7, 300)]
    for seed in (1, 2):  # new values in the same buffers, as each network replay leaves them
        raw = torch.from_numpy(raw_batch(seed, 4)).to(device)
        tail = torch_network.network_tail(raw)
        for field in ("raw", "scores", "classes"):
            getattr(static[4], field).copy_(getattr(tail, field))
        rows = rows_for(3)
        options = np.array([torch_nms.options_row(lim, row) for lim, row in zip(limits, rows)], np.float32)
        got, counts, exact = graphed(options)
        assert exact.all()
        want = torch_decode.postprocess_batch(raw[:3], rows, limits)
        assert_identical(torch_nms.to_detections(got, counts), want)
        assert sum(len(d.scores) for d in want) > 100


@needs_cuda
def test_one_graph_serves_sparse_and_crowded_images_alike():
    """The kernels work over the candidates each image has: one replay answers a batch mixing an
    image with none, one with a few and one with hundreds, each exactly."""
    from yolo_triton.pipeline import torch_network

    device = torch.device("cuda", 0)
    static = {4: torch_network.network_tail(torch.zeros((4, 84, 8400), device=device))}
    graphed = torch_nms.GraphedNms(static, device)
    raw = torch.from_numpy(raw_batch(1, 4)).to(device)
    tail = torch_network.network_tail(raw)
    for field in ("raw", "scores", "classes"):
        getattr(static[4], field).copy_(getattr(tail, field))
    rows = rows_for(3)
    limits = [(1.0, 0.7, 300), (0.995, 0.7, 300), (0.25, 0.7, 300)]
    options = np.array([torch_nms.options_row(lim, row) for lim, row in zip(limits, rows)], np.float32)
    got, counts, exact = graphed(options)
    assert exact.all()
    want = torch_decode.postprocess_batch(raw[:3], rows, limits)
    assert_identical(torch_nms.to_detections(got, counts), want)
    assert len(want[0].scores) == 0 and 0 < len(want[1].scores) < 32 < len(want[2].scores)


def test_the_table_puts_each_images_count_and_flag_before_its_rows():
    """GraphedNms's one copy out: (count, exact, rows...) per image, counts exact in float32;
    `unpack` reads as many rows as the caller copied."""
    raw = raw_batch(4, 2)
    limits = [(0.25, 0.7, 5), (0.99, 0.7, 300)]
    rows, counts, exact = fixed(raw, limits)
    assert rows.shape == (2, torch_nms.CANDIDATES, torch_nms.ROW)
    assert counts.tolist() == [5, len(both(raw, limits)[1][1].scores)] and exact.all()
    narrow = np.concatenate([counts[:, None], exact[:, None], rows[:, :5].reshape(2, -1)], 1).astype(np.float32)
    again = torch_nms.unpack(narrow, 5)
    np.testing.assert_array_equal(again[0], rows[:, :5])
    np.testing.assert_array_equal(again[1], counts)


@pytest.mark.skipif(CUDA, reason="checks the refusal where no CUDA graph can be captured (this machine has a GPU)")
def test_where_the_graphs_cannot_be_made_the_pipeline_is_told_why_and_uses_the_dynamic_nms():
    from yolo_triton.pipeline import torch_network

    tails = {1: torch_network.network_tail(torch.from_numpy(raw_batch(2, 1, nc=3, anchors=64)))}
    graphed, note = torch_nms.graphed_or_none(tails, torch.device("cpu"))
    assert graphed is None
    assert note.startswith("NMS: dynamic (torch_decode): the NMS kernels failed (")


def test_the_load_time_check_passes_the_kernels_and_refuses_a_wrong_answer():
    """What the GPU models run at load before they let the kernels answer: `nms.decode`'s boxes
    bit for bit on a crowded synthetic batch, or a RuntimeError naming the image."""
    torch_nms.check_against_numpy(torch_nms.postprocess_batch, (2, 84, 8400), DEVICE)

    def one_box_short(raw, rows, limits):
        got = torch_nms.postprocess_batch(raw, rows, limits)
        return [Detections(d.boxes[:-1], d.scores[:-1], d.classes[:-1]) for d in got]

    with pytest.raises(RuntimeError, match="disagree with nms.decode on image 0"):
        torch_nms.check_against_numpy(one_box_short, (2, 84, 8400), DEVICE)
