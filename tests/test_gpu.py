"""The GPU variant: its torch math against the NumPy originals (CPU, always), its configs and the
launcher's decision (always), and the served GPU ensemble (only where CUDA is visible).

The CPU tests are what keeps the torch stages (pipeline.torch_*) honest in CI: the GPU models run
exactly these functions, only on CUDA tensors.
"""

from __future__ import annotations

import functools
import json
import threading

import cv2
import numpy as np
import pytest
import torch
from conftest import sample_images
from test_serving import iou_matrix
from tritonclient.grpc import InferenceServerClient

from yolo_triton import spec
from yolo_triton.client.detector import OUTPUTS, DetectorClient, build_inputs, parse_outputs
from yolo_triton.pipeline import geometry, nms, postprocess, torch_decode, torch_letterbox, torch_network
from yolo_triton.pipeline.validation import InputError, check_image_shape, check_images
from yolo_triton.repository import configs as repository
from yolo_triton.serve import launcher

GPU = spec.variant("gpu")
FUSED = spec.variant("gpu_fused")
GPU_MODELS = [GPU.ensemble, FUSED.ensemble]
CUDA = torch.cuda.is_available()
# The letterbox and NMS kernels run on the GPU where there is one; on CPU tensors otherwise, in
# Triton's interpreter (conftest.py).
DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU visible to torch (none here)")


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random content: bilinear resizing differs from OpenCV's only in rounding, as on photos."""
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 0)


# --- letterbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1080, 810), (720, 1280), (8, 8), (1, 1), (40, 1500), (640, 640), (321, 479)])
def test_letterbox_batch_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    img = _image(rng, *shape)
    canvas, lb = geometry.letterbox(img, 640)
    want = geometry.to_pixels(canvas[None])[0]
    got = torch_letterbox.letterbox_batch(torch.from_numpy(img)[None].to(DEVICE), 640)[0].cpu().numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    diff = np.abs(got - want) * 255
    assert diff.max() <= 1 + 1e-3, "at most one grey level apart (OpenCV rounds fixed-point, the kernel float)"
    assert diff.mean() < 0.2
    inside = np.zeros(want.shape[1:], bool)
    inside[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = True
    assert np.array_equal(got[:, ~inside], want[:, ~inside]), "padding must be exactly 114/255"
    if (lb.new_h, lb.new_w) == shape:
        assert np.array_equal(got, want), "no resize: bit-identical"


def test_letterbox_batch_equals_one_by_one():
    rng = np.random.default_rng(7)
    imgs = torch.from_numpy(np.stack([_image(rng, 300, 500) for _ in range(3)])).to(DEVICE)
    batch = torch_letterbox.letterbox_batch(imgs, 320)
    for i in range(3):
        assert torch.equal(batch[i], torch_letterbox.letterbox_batch(imgs[i : i + 1], 320)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_letterbox_many_writes_each_request_in_order(dtype):
    """Requests of mixed sizes land in request order, each with the rows of its own plan; rows past
    the batch are left alone."""
    rng = np.random.default_rng(5)
    sizes = [(2, 300, 500), (1, 300, 500), (1, 100, 50), (2, 300, 500), (1, 1, 1)]
    batches = [torch.from_numpy(np.stack([_image(rng, h, w) for _ in range(n)])).to(DEVICE) for n, h, w in sizes]
    out = torch.full((10, 3, 320, 320), -1.0, dtype=dtype, device=DEVICE)
    rows = torch_letterbox.letterbox_many(batches, out)
    start = 0
    for b, (n, h, w) in zip(batches, sizes):
        want = torch_letterbox.letterbox_batch(b, 320).to(dtype)
        assert torch.equal(out[start : start + n], want)
        assert np.array_equal(rows[start : start + n], np.repeat(geometry.plan(h, w, 320).as_array()[None], n, 0))
        start += n
    assert (out[start:] == -1).all(), "rows past the batch are left alone"


def _mixed_requests(rng: np.random.Generator) -> list[torch.Tensor]:
    sizes = [(2, 300, 500), (1, 100, 50), (1, 1, 1), (1, 640, 640), (2, 33, 700)]
    return [torch.from_numpy(np.stack([_image(rng, h, w) for _ in range(n)])).to(DEVICE) for n, h, w in sizes]


def test_letterbox_table_reads_each_image_at_its_offset_with_its_own_plan():
    """The replayable kernel: frames of any sizes at any byte offsets in one staging buffer, plans
    in a table, padding rows of zeros left alone; the same pixels as `letterbox_many`."""
    from yolo_triton.pipeline import letterbox_kernels

    batches = _mixed_requests(np.random.default_rng(9))
    total = sum(b.shape[0] for b in batches)
    staging = torch.zeros(sum(b.numel() for b in batches) + 3, dtype=torch.uint8, device=DEVICE)
    params = torch.zeros((total + 2, letterbox_kernels.WIDTH), dtype=torch.int32)
    table, offset, i = params.numpy(), 3, 0  # an odd start: frames need no alignment
    for b in batches:
        n, h, w, _ = b.shape
        staging[offset : offset + b.numel()] = b.reshape(-1)
        letterbox_kernels.table_rows(table[i : i + n], offset, h, w, geometry.plan(h, w, 320))
        offset, i = offset + b.numel(), i + n
    got = torch.full((total + 2, 3, 320, 320), -1.0, dtype=torch.float16, device=DEVICE)
    letterbox_kernels.letterbox_table(staging, params.to(DEVICE), got)
    want = torch.full_like(got, -1.0)
    torch_letterbox.letterbox_many(batches, want)
    assert torch.equal(got, want)
    assert (got[total:] == -1).all(), "padding rows: nothing written"


@needs_cuda
def test_graphed_letterbox_replays_what_letterbox_many_writes():
    """Mixed sizes in one replay, a smaller batch after a larger one, and a batch over the staging
    buffer (answered by letterbox_many): the same pixels and rows every time."""
    batches = _mixed_requests(np.random.default_rng(11))
    out = torch.zeros((16, 3, 320, 320), dtype=torch.float16, device=DEVICE)
    graphed = torch_letterbox.GraphedLetterbox(out, [1, 2, 4, 8, 16], staging_bytes=4 << 20)
    graphed.check()  # what the fused model runs at load
    want = torch.zeros_like(out)
    over = [torch.full((1, 1000, 800, 3), 7, dtype=torch.uint8, device=DEVICE)] * 2  # 4.8 MB: past the 4 MiB
    for chosen in (batches, batches[1:2], batches[:1] * 4, over):
        total = sum(b.shape[0] for b in chosen)
        rows = graphed(chosen)
        want_rows = torch_letterbox.letterbox_many(chosen, want)
        assert np.array_equal(rows, want_rows)
        assert torch.equal(out[:total], want[:total])


class _Tensor:
    """What gpu_tensors needs of a python-backend tensor: DLPack out."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def to_dlpack(self):  # noqa: ANN201
        return torch.utils.dlpack.to_dlpack(self.x)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_optional_inputs_come_back_with_their_values_and_dtypes(device):
    from types import SimpleNamespace

    from yolo_triton.backend import gpu_tensors

    sent = {"CONF_THRESHOLD": np.array([[0.25], [np.nan]], np.float32),
            "MAX_DETECTIONS": np.array([[7], [300]], np.int32), "MULTI_LABEL": np.array([[True], [False]])}
    request = {k: _Tensor(torch.from_numpy(v).to(device)) for k, v in sent.items()}
    pb_utils = SimpleNamespace(get_input_tensor_by_name=lambda r, name: r.get(name))
    got = gpu_tensors.optionals(pb_utils, request, [*sent, "IOU_THRESHOLD"])
    assert got["IOU_THRESHOLD"] is None
    for k, v in sent.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)


def test_image_shape_checks_name_the_problem():
    """The GPU models check a tensor's shape with `check_image_shape`; same messages as `check_images`."""
    check_image_shape((2, 1080, 810, 3))
    cases = [((1, spec.MAX_IMAGE_SIDE + 1, 10, 3), "IMAGE.*exceeds"), ((spec.MAX_BATCH + 1, 10, 10, 3), "batch of"),
             ((1, 10, 10, 4), "3 channels"), ((10, 10, 3), "rank 3"), ((0, 10, 10, 3), "empty batch"),
             ((1, 0, 10, 3), "zero size")]
    for shape, message in cases:
        with pytest.raises(InputError, match=message):
            check_image_shape(shape)
        with pytest.raises(InputError, match=message):
            check_images(np.zeros(shape, np.uint8))


# --- decode + NMS ---------------------------------------------------------------------------------


def _raw(rng: np.random.Generator, nc: int, anchors: int, size: int = 640) -> np.ndarray:
    """Detector-like output: boxes clustered around a few objects, so NMS has real work."""
    raw = np.zeros((4 + nc, anchors), np.float32)
    centers = rng.uniform(0, size, (12, 2))
    k = rng.integers(0, len(centers), anchors)
    raw[0] = centers[k, 0] + rng.normal(0, 6, anchors)
    raw[1] = centers[k, 1] + rng.normal(0, 6, anchors)
    raw[2:4] = rng.uniform(10, 120, (2, anchors))
    raw[4:] = rng.random((nc, anchors)).astype(np.float32) ** 6
    return raw


def _decode(raws: np.ndarray, limits: list[tuple[float, float, int]], device: str = "cpu") -> list[nms.Detections]:
    conf, iou, max_det = zip(*limits)
    return torch_decode.decode_batch(torch.from_numpy(raws).to(device), conf, iou, max_det).to_numpy(len(raws))


def _assert_identical(got: nms.Detections, want: nms.Detections) -> None:
    assert len(got.scores) == len(want.scores)
    assert np.array_equal(got.classes, want.classes)
    assert np.array_equal(got.scores, want.scores)
    assert np.array_equal(got.boxes, want.boxes)


@pytest.mark.parametrize("nc,anchors", [(3, 2100), (80, 8400)])
def test_decode_batch_equals_numpy_decode(nc, anchors):
    """Per-image thresholds in one batch; every image must equal nms.decode bit for bit."""
    rng = np.random.default_rng(nc)
    limits = [(0.25, 0.7, 300), (0.1, 0.5, 5), (0.5, 0.7, 300), (0.999, 0.7, 300), (0.05, 0.45, 50)]
    raws = np.stack([_raw(rng, nc, anchors) for _ in limits])
    got = _decode(raws, limits)
    conf, iou, max_det = zip(*limits)
    tail = torch_network.network_tail(torch.from_numpy(raws))  # what the GPU pipeline's graphs hand over
    assert bool(tail.finite) and torch.equal(tail.raw, torch.from_numpy(raws))
    best = (tail.scores, tail.classes)
    given = torch_decode.decode_batch(tail.raw, conf, iou, max_det, best=best).to_numpy(len(raws))
    kept = 0
    for raw, (c, u, m), g, b in zip(raws, limits, got, given):
        want = nms.decode(raw, c, u, m)
        _assert_identical(g, want)
        _assert_identical(b, want)
        kept += len(want.scores)
    assert kept > 50, "the case must exercise NMS"


def test_network_tail_flags_a_non_finite_output_of_any_image():
    rng = np.random.default_rng(9)
    raws = torch.from_numpy(np.stack([_raw(rng, 3, 2100) for _ in range(3)])).half()
    assert bool(torch_network.network_tail(raws).finite)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = raws.clone()
        broken[2, 5, 17] = bad
        tail = torch_network.network_tail(broken)
        assert not bool(tail.finite), bad
        assert not bool(tail.head(1).finite), "the flag covers the whole bucket, padding included"
        assert tail.raw.dtype == torch.float32 and tail.head(2).raw.shape == (2, 7, 2100)


@pytest.mark.parametrize("n", [1, 3])
def test_decode_batch_with_shared_thresholds(n):
    """The common case (one threshold set for the batch) takes scalar paths; same results."""
    rng = np.random.default_rng(10 + n)
    raws = np.stack([_raw(rng, 80, 8400) for _ in range(n)])
    limits = [(0.2, 0.6, 7)] * n
    for raw, g in zip(raws, _decode(raws, limits)):
        want = nms.decode(raw, 0.2, 0.6, 7)
        assert len(want.scores) == 7
        _assert_identical(g, want)


@pytest.mark.parametrize("flags", [(True, True), (True, False)], ids=["all-multi", "mixed"])
def test_decode_batch_multi_label_equals_numpy(flags, monkeypatch):
    """MULTI_LABEL (the validator's protocol) per image, including the per-image candidate cap."""
    rng = np.random.default_rng(12)
    raws = np.stack([_raw(rng, 3, 2100) for _ in flags])
    raws[:, 4:] = raws[:, 4:] ** 0.5  # several classes above threshold per anchor
    limits = [(0.3, 0.6, 300), (0.2, 0.7, 100)]
    conf, iou, max_det = zip(*limits)
    for cap in (None, 400):
        if cap:
            monkeypatch.setattr(nms, "MAX_NMS", cap)
            monkeypatch.setattr(torch_decode, "MAX_NMS", cap)
        got = torch_decode.decode_batch(torch.from_numpy(raws), conf, iou, max_det, flags).to_numpy(len(raws))
        for raw, (c, u, m), f, g in zip(raws, limits, flags, got):
            _assert_identical(g, nms.decode(raw, c, u, m, f))


def test_decode_batch_caps_candidates_like_numpy(monkeypatch):
    monkeypatch.setattr(nms, "MAX_NMS", 150)
    monkeypatch.setattr(torch_decode, "MAX_NMS", 150)
    rng = np.random.default_rng(3)
    raws = np.stack([_raw(rng, 3, 2100) for _ in range(2)])
    limits = [(0.01, 0.7, 300), (0.01, 0.6, 300)]
    for raw, (c, u, m), g in zip(raws, limits, _decode(raws, limits)):
        _assert_identical(g, nms.decode(raw, c, u, m))


def test_decode_batch_without_candidates():
    rng = np.random.default_rng(4)
    raws = np.stack([_raw(rng, 3, 2100) for _ in range(2)])
    for d in _decode(raws, [(1.0, 0.7, 300), (1.0, 0.7, 300)]):
        assert len(d.scores) == 0 and d.boxes.shape == (0, 4)


def test_postprocess_batch_equals_cpu_postprocess():
    """Decode on torch + unletterbox on the host = postprocess.postprocess_batch, padded the same."""
    rng = np.random.default_rng(5)
    raws = np.stack([_raw(rng, 3, 2100, size=320) for _ in range(3)])
    lbs = np.stack([geometry.plan(h, w, 320).as_array() for h, w in ((1080, 810), (100, 1500), (320, 320))])
    limits = [(0.25, 0.7, 300), (0.2, 0.6, 10), (0.3, 0.7, 300)]
    want = postprocess.postprocess_batch(raws, lbs, limits)
    got = postprocess.pad_batch(torch_decode.postprocess_batch(torch.from_numpy(raws), lbs, limits))
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_gpu_pipeline_finish_answers_the_kept_requests_as_in_the_full_batch():
    """`GpuPipeline.finish(keep=...)`: requests refused after `start` lose their images before NMS;
    every kept request gets, with its own options, what it gets in the full batch. Runs on CPU
    tensors: once the network output exists, finish needs no GPU."""
    from yolo_triton.pipeline.gpu import GpuPipeline, Started

    rng = np.random.default_rng(11)
    sizes = [1, 2, 1, 3]
    raws = np.stack([_raw(rng, 3, 2100, size=320) for _ in range(sum(sizes))])
    rows = np.stack([geometry.plan(h, w, 320).as_array() for h, w in [(1080, 810), (320, 320), (100, 1500)] * 3][:7])
    limits = [[(0.25, 0.7, 300)], [(0.1, 0.5, 5)] * 2, [(0.3, 0.7, 300)], [(0.2, 0.6, 7)] * 3]
    multi = [[False], [True, False], [False], [False, True, False]]
    pipeline = GpuPipeline.__new__(GpuPipeline)  # no network, no graphs: finish only reads the output
    pipeline.times, pipeline.eager_fallbacks, pipeline.nms = None, 0, None  # NMS eagerly, as on CPU tensors

    def started() -> Started:
        return Started(rows, torch.from_numpy(raws), sizes, 0.0)

    full = pipeline.finish(started(), limits, multi)
    assert sum(int(out[3].sum()) for out in full) > 20, "the case must exercise NMS"
    for keep in ([1, 3], [0], [2, 3], [0, 1, 2, 3]):
        got = pipeline.finish(started(), [limits[k] for k in keep], [multi[k] for k in keep], keep)
        assert len(got) == len(keep)
        for out, k in zip(got, keep):
            for a, b in zip(out, full[k]):
                assert np.array_equal(a, b), f"request {k} of keep={keep}"
    assert pipeline.finish(started(), [], [], []) == []
    best = torch_decode.best_class(torch.from_numpy(raws))
    for keep in ([1, 3], [0, 1, 2, 3]):
        run = Started(rows, torch.from_numpy(raws), sizes, 0.0, best, lambda: True)
        got = pipeline.finish(run, [limits[k] for k in keep], [multi[k] for k in keep], keep)
        for out, k in zip(got, keep):
            assert all(np.array_equal(a, b) for a, b in zip(out, full[k])), f"best given, request {k}"


def test_gpu_pipeline_answers_a_non_finite_replay_from_the_eager_network():
    """A replay flagged non-finite never answers: the eager network's output does, and it is counted."""
    from types import SimpleNamespace

    from yolo_triton.pipeline.gpu import GpuPipeline, Started

    rng = np.random.default_rng(13)
    raws = torch.from_numpy(np.stack([_raw(rng, 3, 2100, size=320) for _ in range(2)]))
    rows = np.stack([geometry.plan(1080, 810, 320).as_array()] * 2)
    limits, multi = [[(0.25, 0.7, 300)], [(0.1, 0.5, 5)]], [[False], [False]]
    pipeline = GpuPipeline.__new__(GpuPipeline)
    pipeline.times, pipeline.eager_fallbacks, pipeline.nms = None, 0, None  # NMS eagerly, as on CPU tensors
    pipeline.net = SimpleNamespace(static_in=torch.zeros((4, 3, 320, 320), dtype=torch.float16))
    pipeline.eager = lambda x: raws[: x.shape[0]].half()  # what the network computes for static_in
    want = pipeline.finish(Started(rows, raws.half().float(), [1, 1], 0.0), limits, multi)
    assert sum(int(out[3].sum()) for out in want) > 5
    broken = torch.full_like(raws, float("nan"))
    got = pipeline.finish(Started(rows, broken, [1, 1], 0.0, torch_decode.best_class(broken), lambda: False),
                          limits, multi)
    assert pipeline.eager_fallbacks == 1
    for g, w in zip(got, want):
        assert all(np.array_equal(a, b) for a, b in zip(g, w))


# --- artefact, configs, launcher ------------------------------------------------------------------


def test_gpu_artefact_matches_the_onnx_export(repo, facts):
    """The exported network the GPU detector loads computes what the ONNX variants compute (FP32, CPU)."""
    from yolo_triton.pipeline.ort_session import make_session

    path = repo / GPU.detector / "1" / GPU.artefact
    net, recorded = torch_network.load_network(str(path), torch.device("cpu"), half=False)
    assert recorded["imgsz"] == facts.imgsz and recorded["names"] == list(facts.names)
    session = make_session(repo / spec.variant("ort").detector / "1" / "model.onnx")
    x = torch.from_numpy(geometry.to_pixels(np.stack([geometry.letterbox(im, facts.imgsz)[0]
                                                      for im in sample_images().values()])))
    with torch.no_grad():
        got = net(x).numpy()
    want = session.run([spec.RAW.name], {spec.PIXELS.name: x.numpy()})[0]
    assert got.shape == want.shape == (x.shape[0], facts.num_outputs, facts.num_anchors)
    assert np.abs(got[:, :4] - want[:, :4]).max() < 0.01, "box coordinates (pixels)"
    assert np.abs(got[:, 4:] - want[:, 4:]).max() < 1e-4, "class scores"
    with torch.no_grad():  # the batch axis is symbolic: any batch size, each image on its own
        one = net(x[-1:]).numpy()
    assert np.abs(one - got[-1:]).max() < 0.01


def test_exported_network_holds_nothing_a_cuda_graph_cannot_capture(repo):
    """No host reads or CPU-made tensors inside the program: the anchor grid is a constant.

    Rebuilding the grid in the graph (aten.arange on the CPU, aten.item on the strides) made
    every CUDA-graph capture fail on the GPU ("operation not permitted when stream is capturing").
    """
    program = torch.export.load(str(repo / GPU.detector / "1" / GPU.artefact))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not {o for o in ops if o.startswith(("aten.item", "aten.arange", "aten._local_scalar_dense"))}
    assert any(o.startswith("aten.conv2d") for o in ops)


def test_served_network_refuses_an_artefact_of_another_size(repo, facts):
    path = repo / GPU.detector / "1" / GPU.artefact
    net = torch_network.load_served_network(path, torch.device("cpu"), facts.imgsz)
    assert next(net.parameters()).dtype == torch.float16
    with pytest.raises(ValueError, match=f"exported for imgsz {facts.imgsz} but the config says 640"):
        torch_network.load_served_network(path, torch.device("cpu"), 640)


def test_graph_buckets_follow_the_config():
    assert torch_network.graph_buckets("1,2,4,8,16,32,64", 16) == [1, 2, 4, 8, 16]
    assert torch_network.graph_buckets("", spec.MAX_BATCH) == list(torch_network.BUCKETS)


def test_gpu_configs_keep_tensors_on_the_gpu(repo):
    configs = {m: repository.parse((repo / m / "config.pbtxt").read_text())
               for m in (GPU.preprocess, GPU.detector, GPU.postprocess)}
    for name, cfg in configs.items():
        assert cfg.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no", name
        assert [g.kind for g in cfg.instance_group] == [repository.mc.ModelInstanceGroup.KIND_GPU], name
        assert cfg.max_batch_size == spec.MAX_BATCH and cfg.HasField("dynamic_batching"), name
    det = configs[GPU.detector]
    assert det.dynamic_batching.max_queue_delay_microseconds == 0, "a batch of one must not wait"
    assert list(det.dynamic_batching.preferred_batch_size) == list(torch_network.BUCKETS)
    assert det.parameters["artefact"].string_value == GPU.artefact
    ens = repository.parse((repo / GPU.ensemble / "config.pbtxt").read_text())
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [GPU.preprocess, GPU.detector, GPU.postprocess]
    fused = repository.parse((repo / FUSED.pipeline / "config.pbtxt").read_text())
    assert fused.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert [g.kind for g in fused.instance_group] == [repository.mc.ModelInstanceGroup.KIND_GPU]
    assert fused.instance_group[0].count == spec.GPU_PIPELINE_INSTANCES == 2, "one runs while the other's copies do"
    assert fused.max_batch_size == max(torch_network.BUCKETS), "a batch never exceeds the largest CUDA graph"
    decoders = {m: cfg.parameters["nvjpeg"].string_value if "nvjpeg" in cfg.parameters else None
                for m, cfg in (*configs.items(), (FUSED.pipeline, fused))}
    assert decoders == {GPU.preprocess: "1", GPU.detector: None, GPU.postprocess: None, FUSED.pipeline: "1"}, \
        "JPEG is decoded on the GPU by the steps that take IMAGE_BYTES"


def test_bench_gpu_sets_the_decoder_of_its_own_repositories_and_leaves_a_named_one_alone(repo, tmp_path):
    import shutil

    from yolo_triton.perf import bench_gpu

    assert bench_gpu.decoder_params(host_jpeg=False, own_repo=False) is None
    for host_jpeg, want in ((True, "0"), (False, "1")):  # "1" after "0": a reused repository decodes on the GPU again
        params = bench_gpu.decoder_params(host_jpeg, own_repo=True)
        for model in (FUSED.pipeline, GPU.preprocess):
            if not (tmp_path / model).exists():  # copied once: the second pass tunes the first one's config
                shutil.copytree(repo / model, tmp_path / model, ignore=shutil.ignore_patterns("1"))
            bench_gpu.tune_model(tmp_path, model, params=params)
            cfg = repository.parse((tmp_path / model / "config.pbtxt").read_text())
            assert cfg.parameters["nvjpeg"].string_value == want, (model, host_jpeg)
            assert cfg.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no", "the rest is kept"


def test_launcher_loads_the_gpu_variant_only_with_a_gpu(repo):
    without = launcher.plan_models(repo, set(), gpu=False)
    assert without.skipped[GPU.ensemble] == "needs a GPU, none visible"
    assert GPU.detector not in without.load
    assert FUSED.pipeline not in without.load and "GPU" in without.skipped[FUSED.ensemble]
    with_gpu = launcher.plan_models(repo, set(), gpu=True)
    assert {GPU.preprocess, GPU.detector, GPU.postprocess, GPU.ensemble} <= set(with_gpu.load)
    assert {FUSED.pipeline, FUSED.ensemble} <= set(with_gpu.load)
    assert with_gpu.alias == FUSED, "on a GPU machine `yolov8n` serves the fused GPU pipeline (bundled server)"


@pytest.mark.skipif(launcher.gpu_available(), reason="this machine has a GPU: the GPU variant is served")
def test_server_without_gpu_reports_why_it_skips_the_gpu_variant(server):
    assert "GPU" in server.plan.skipped[GPU.ensemble]
    assert GPU.ensemble not in server.plan.load
    with DetectorClient(server.url) as c:
        cfg = c.client.get_model_config(spec.ALIAS, as_json=True)["config"]
        assert cfg["parameters"]["variant"]["string_value"] != "gpu"
        assert c.detect(next(iter(sample_images().values()))).latency_ms > 0, "everything else still serves"


# --- on a GPU ----------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.gpu
def test_cuda_ops_match_numpy():
    rng = np.random.default_rng(11)
    limits = [(0.25, 0.7, 300), (0.1, 0.5, 20)]
    raws = np.stack([_raw(rng, 80, 8400) for _ in limits])
    for raw, (c, u, m), g in zip(raws, limits, _decode(raws, limits, "cuda")):
        want = nms.decode(raw, c, u, m)
        assert len(g.scores) == len(want.scores)
        assert np.array_equal(g.classes, want.classes)
        np.testing.assert_allclose(g.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, want.scores, atol=1e-6)


@needs_cuda
@pytest.mark.gpu
def test_compiled_network_replays_what_the_exported_network_computes(repo, facts):
    device = torch.device("cuda", 0)
    net = torch_network.load_served_network(repo / GPU.detector / "1" / GPU.artefact, device, facts.imgsz)
    x = torch.cat([torch_letterbox.letterbox_batch(torch.from_numpy(im)[None].to(device), facts.imgsz)
                   for im in sample_images().values()]).half()
    with torch.inference_mode():
        want = net(x).float()  # eager first: eager work first seen after a capture once broke replays
        fast, note = torch_network.compile_network(net, facts.imgsz)
        assert note == "network compiled by TorchInductor"
        graphed = torch_network.GraphedNetwork(fast, facts.imgsz, device, torch.float16, (1, 8), tail=True)
        graphed.check(net)
        got = graphed(x).float()
        n = x.shape[0]
        graphed.static_in[:n].copy_(x)
        tail = graphed.run_tail(n)
        assert torch.equal(tail.raw, graphed.static_out[8][:n].float()), "the tail reads this replay's output"
        assert all(torch.equal(a, b) for a, b in zip((tail.scores, tail.classes), torch_decode.best_class(tail.raw)))
        assert bool(tail.finite)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 0.02 * scale
    assert float((got[:, 4:] - want[:, 4:]).abs().max()) <= 0.01, "class scores"


def _served(url: str, model: str, image: np.ndarray, **kw) -> nms.Detections:
    with DetectorClient(url, model=model, timeout_s=120) as c:
        return c.detect(image, **kw).detections


def _validation_images(n: int) -> list[np.ndarray]:
    """The demo data set's validation images (regrown from its seed, JPEG round trip as on disk)."""
    from make_dataset import DEFAULT_VAL_SEED

    from yolo_triton.data import synth

    out = []
    for i in range(n):
        img, _ = synth.render_image(synth.image_rng(DEFAULT_VAL_SEED, i))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, synth.JPEG_QUALITY])
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    return out


def _fp32_onnx_reference(repo, imgsz: int):  # noqa: ANN202
    """The CPU variants' pipeline, run in this process: NumPy letterbox, FP32 ONNX Runtime, NumPy
    decode/NMS/unletterbox (`pipeline.cpu.CpuPipeline`, what `yolov8n_ort_fused` serves)."""
    from yolo_triton.pipeline.cpu import CpuPipeline

    pipeline = CpuPipeline(repo / spec.variant("ort").detector / "1" / "model.onnx", imgsz)
    defaults = (spec.DEFAULT_CONF, spec.DEFAULT_IOU, spec.DEFAULT_MAX_DET)

    def detect(img: np.ndarray) -> nms.Detections:
        return postprocess.unpad(*pipeline([img[None]], [[defaults]], [[False]])[0])[0]

    return detect


def _twin_ious(a: nms.Detections, b: nms.Detections, conf: float, margin: float = 0.03,
               floor: float = 0.0) -> np.ndarray:
    """Both ways, each box scoring over `conf + margin` (and over `floor`) against its best twin of
    the same class in the other answer (IoU; 0 without one).

    Two answers for one image from different kernels (FP16 vs FP32, or FP16 compiled for another
    batch size or in another process) round differently: a box near the threshold may appear in
    one only, and NMS may keep another of two near-equal candidates; a confident box may not move.
    """
    out = []
    for x, y in ((a, b), (b, a)):
        sure = x.scores > max(conf + margin, floor)
        if not sure.any():
            continue
        same = x.classes[sure][:, None] == y.classes[None, :]
        out.append(np.where(same, iou_matrix(x.boxes[sure], y.boxes), 0.0).max(1) if len(y.scores) else
                   np.zeros(int(sure.sum())))
    return np.concatenate(out) if out else np.zeros(0)


def assert_fp16_twins(got: nms.Detections, want: nms.Detections, conf: float = spec.DEFAULT_CONF,
                      floor: float = 0.0) -> None:
    """Two FP16 answers agree: every confident box has a twin at IoU >= 0.95, the bound against FP32
    (seen on the H200 between batch sizes: a box edge 1.4 px apart at 320, IoU 0.966)."""
    ious = _twin_ious(got, want, conf, floor=floor)
    assert (ious >= 0.95).all(), f"a confident box without a twin: best IoU {ious.min():.4f}"


@needs_cuda
@pytest.mark.gpu
def test_gpu_ensemble_agrees_with_the_fp32_onnx_variant(server, repo, facts):
    """FP16 GPU pipeline vs the FP32 ONNX pipeline: every confident box has a twin of the same class
    with IoU >= 0.95. Boxes within 0.03 of the confidence threshold may flip either way."""
    reference = _fp32_onnx_reference(repo, facts.imgsz)
    images = list(sample_images().values()) + _validation_images(40)
    best_ious: list[float] = []
    for k, img in enumerate(images):
        ious = _twin_ious(_served(server.url, GPU.ensemble, img), reference(img), spec.DEFAULT_CONF)
        for j in np.flatnonzero(ious < 0.95):
            print(f"image {k}: a confident box's best IoU {ious[j]:.3f}")
        best_ious += ious.tolist()
    ious = np.array(best_ious)
    print(f"\nFP16 GPU vs FP32 ONNX on {len(images)} images: {len(ious)} confident boxes (both directions), "
          f"{(ious >= 0.9).mean():.1%} at IoU >= 0.9, {(ious >= 0.95).mean():.1%} at IoU >= 0.95, "
          f"worst {ious.min():.4f}")
    assert len(ious) > 50, "the comparison needs detections (the demo checkpoint)"
    assert (ious >= 0.8).all(), "a confident box moved: not FP16 rounding"
    assert (ious >= 0.9).mean() >= 0.99, "FP16 keeps at least 99% of the FP32 boxes (IoU >= 0.9, same class)"
    assert (ious >= 0.95).mean() >= 0.98, "IoU >= 0.95 for (nearly) every box"


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("model", GPU_MODELS)
def test_gpu_ensemble_answers_any_size_and_batches(server, facts, model):
    rng = np.random.default_rng(0)
    with DetectorClient(server.url, model=model, timeout_s=120) as c:
        for h, w in [(1080, 810), (8, 8), (1, 1), (3000, 4000), (40, 1500)]:
            det = c.detect(_image(rng, h, w), conf=0.01).detections
            assert ((det.boxes[:, [0, 2]] >= 0) & (det.boxes[:, [0, 2]] <= w)).all()
            assert ((det.boxes[:, [1, 3]] >= 0) & (det.boxes[:, [1, 3]] <= h)).all()
            assert ((det.classes >= 0) & (det.classes < len(facts.names))).all()
        image = next(iter(sample_images().values()))
        flipped = np.ascontiguousarray(image[:, ::-1])
        batch, _ = c.infer(np.stack([image, flipped, image]))
        for got, img in zip(batch, [image, flipped, image]):
            assert_fp16_twins(got, c.detect(img).detections)  # batch 3 replays another graph than batch 1
        strict = c.detect(image, conf=0.8).detections
        assert (strict.scores > 0.8).all()
        assert len(c.detect(image, conf=0.05, max_det=1).detections.scores) <= 1


def _sent_at_once(client: InferenceServerClient, model: str, requests: list[list]) -> dict[int, nms.Detections | str]:
    """Every request sent before any answer is awaited (asynchronously, from one client), so that
    they queue and the batcher groups them: each answer by its request's index, its detections or
    the error's text."""
    answers: dict[int, nms.Detections | str] = {}
    all_in = threading.Event()

    def done(k: int, result, error) -> None:  # noqa: ANN001 - tritonclient's callback arguments
        answers[k] = str(error) if error is not None else parse_outputs(result)[0]
        if len(answers) == len(requests):
            all_in.set()

    for k, inputs in enumerate(requests):
        client.async_infer(model, inputs, functools.partial(done, k), outputs=OUTPUTS, client_timeout=60)
    assert all_in.wait(120), f"{len(requests) - len(answers)} requests unanswered"
    return answers


def _executions(url: str, model: str) -> int:
    """The model's execution count so far (Triton leaves a zero out of its statistics)."""
    with DetectorClient(url) as c:
        return int(c.model_stats(model)["model_stats"][0].get("execution_count", 0))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("model", GPU_MODELS)
def test_gpu_concurrent_mixed_sizes_equal_single_requests(server, model):
    images = list(sample_images().values())
    images += [np.ascontiguousarray(im[: im.shape[0] // 2]) for im in images]
    alone = [_served(server.url, model, im) for im in images]
    stats_of = GPU.detector if model == GPU.ensemble else FUSED.pipeline
    before = _executions(server.url, stats_of)
    # All sent at once: sent from a thread each, through a client each, the fused model's two
    # instances served every request alone (an H100).
    count = 8 * len(images)
    client = InferenceServerClient(server.url)
    try:
        answers = _sent_at_once(client, model, [build_inputs(images[k % len(images)][None]) for k in range(count)])
    finally:
        client.close()
    for k, got in sorted(answers.items()):
        assert not isinstance(got, str), f"request {k} refused: {got}"
        assert_fp16_twins(got, alone[k % len(images)])  # other batch sizes replay other graphs, compiled apart
    executions = _executions(server.url, stats_of) - before
    assert executions < count, f"never batched: {executions} executions for {count} requests"


@needs_cuda
@pytest.mark.gpu
def test_gpu_fused_answers_the_good_requests_of_a_batch_with_bad_options(server, facts):
    """The fused model checks options while the batch's network runs: a request refused then has
    its images dropped before NMS, and the requests batched with it are answered as if alone.

    All requests are built first and then sent at once from one client (asynchronously), their
    images in system shared memory, so they queue. Every request carries the same optional inputs,
    good ones at the defaults: Triton's dynamic batcher only batches requests with the same set of
    inputs, and with options in the bad requests only, no two requests ever met (48 executions
    for 48 requests, twice on the H200).
    """
    from yolo_triton.client.detector import ShmRegion

    images = [cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
              for im in sample_images().values() for scale in [facts.imgsz / max(im.shape[:2])]]
    alone = [_served(server.url, FUSED.ensemble, im) for im in images]
    bad = [({"conf": 1.5}, "CONF_THRESHOLD"), ({"max_det": 0}, "MAX_DETECTIONS"), ({"iou": float("nan")}, "IOU")]
    count = 48
    before = _executions(server.url, FUSED.pipeline)
    client = InferenceServerClient(server.url)
    regions = [ShmRegion.create(client, im.nbytes, server.headers) for im in images]
    try:
        shared = [region.input(im[None]) for region, im in zip(regions, images)]
        good = {"conf": spec.DEFAULT_CONF, "iou": spec.DEFAULT_IOU, "max_det": spec.DEFAULT_MAX_DET}
        requests = [build_inputs(images[k % len(images)][None], image_input=shared[k % len(images)],
                                 **(good | (bad[k % len(bad)][0] if k % 2 else {}))) for k in range(count)]
        answers = _sent_at_once(client, FUSED.ensemble, requests)
    finally:
        for region in regions:
            region.release(client)
        client.close()
    for k, got in sorted(answers.items()):
        if k % 2:
            assert isinstance(got, str) and bad[k % len(bad)][1] in got, f"request {k}: {got}"
        else:
            assert not isinstance(got, str), f"request {k} refused: {got}"
            assert_fp16_twins(got, alone[k % len(images)])  # another image's boxes leaking in would have no twin
    executions = _executions(server.url, FUSED.pipeline) - before
    assert executions < count, f"never batched: {executions} executions for {count} requests"


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("model", GPU_MODELS)
def test_gpu_ensemble_rejects_bad_input_with_a_clear_error(server, model):
    from tritonclient.utils import InferenceServerException

    with DetectorClient(server.url, model=model) as c:
        too_big = np.zeros((1, spec.MAX_IMAGE_SIDE + 1, 8, 3), np.uint8)
        with pytest.raises(InferenceServerException, match="IMAGE.*exceeds"):
            c.client.infer(model, build_inputs(too_big), outputs=OUTPUTS)
        image = next(iter(sample_images().values()))[None]
        with pytest.raises(InferenceServerException, match="CONF_THRESHOLD"):
            c.client.infer(model, build_inputs(image, conf=1.5), outputs=OUTPUTS)
        empty = np.zeros((0, 0, 0, 3), np.uint8)
        with pytest.raises(InferenceServerException, match="IMAGE"):
            c.client.infer(model, build_inputs(empty), outputs=OUTPUTS, client_timeout=30)
        assert c.detect(image[0]).latency_ms > 0, "the model survives bad requests"


@needs_cuda
@pytest.mark.gpu
def test_gpu_fused_equals_the_gpu_ensemble(server):
    """Same letterbox, same network, same NMS: the fused model's answers are the ensemble's.

    Up to FP16 rounding: each model compiles the network in its own process, and cudnn's autotuner
    may pick other convolution kernels there (seen: one box edge 0.2 px apart; two multi-label
    detections of near-equal score in swapped order; at conf 0.01, a box scoring 0.02 replaced
    by its neighbour, IoU 0.93, and on an H100 a box scoring 0.07 without a twin over IoU 0.876).
    At conf 0.01, boxes scoring 0.1 or less are therefore not compared.
    """
    images = list(sample_images().values()) + _validation_images(20)
    found = 0
    for image in images:
        for options in ({}, {"conf": 0.05, "iou": 0.5, "max_det": 3}, {"conf": 0.01, "multi_label": True}):
            want = _served(server.url, GPU.ensemble, image, **options)
            got = _served(server.url, FUSED.ensemble, image, **options)
            conf = options.get("conf", spec.DEFAULT_CONF)
            assert_fp16_twins(got, want, conf, floor=0.1 if conf < 0.05 else 0.0)
            found += len(want.scores)
    assert found > 50, "the comparison needs detections (the demo checkpoint)"


@needs_cuda
@pytest.mark.gpu
def test_alias_serves_the_gpu_variant_on_a_gpu_machine(server):
    with DetectorClient(server.url) as c:
        cfg = c.client.get_model_config(spec.ALIAS, as_json=True)["config"]
        assert cfg["parameters"]["variant"]["string_value"] in ("gpu_fused", "trt")  # spec.FASTEST_FIRST
        assert json.loads(cfg["parameters"]["names"]["string_value"])
