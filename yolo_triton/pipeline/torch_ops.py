"""The GPU variant's tensor math in PyTorch: letterbox, decode + batched NMS, CUDA-graph runner.

Only what cannot stay in NumPy lives here, and every function mirrors a NumPy original that
remains the definition: `letterbox_batch` ~ `geometry.letterbox` + `geometry.to_pixels` (the plan
itself comes from `geometry.plan`), `decode_batch` ~ `nms.decode` (same strict `>` on confidence,
same 30000-candidate cap, same float32 class offsets, same `IoU > threshold` suppression, same
max_det). Mapping boxes back to the image stays `geometry.unletterbox` on the few final boxes.
tests/test_gpu.py checks each against its original on CPU tensors, so CI guards them without a GPU.

torch is imported lazily by callers (the CPU path of the project does not need it at import time).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yolo_triton import spec
from yolo_triton.pipeline import geometry
from yolo_triton.pipeline.nms import MAX_NMS, MAX_WH, Detections

# Batch sizes a CUDA graph is captured for (declared with the variant in spec); a batch is padded
# up to the next one. Powers of two keep the padding under 2x with only a few graphs to capture.
BUCKETS: tuple[int, ...] = tuple(int(b) for b in spec.CUDA_GRAPH_BATCHES.split(",") if int(b) <= spec.MAX_BATCH)
FACTS_EXTRA = "facts.json"  # extra file of the exported archive: the checkpoint facts it holds


# --------------------------------------------------------------------------------------------------
# Preprocess


def letterbox_batch(images: torch.Tensor, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Same-size BGR uint8 NHWC images -> letterboxed RGB float32 NCHW in [0, 1].

    Equals `to_pixels(letterbox(img))` for each image up to bilinear rounding (OpenCV's uint8
    resize uses fixed-point weights; here the float result is rounded to the nearest level, so a
    pixel differs by at most one level). Work happens on `images.device`, in one pass per step
    for the whole batch.
    """
    n, h, w, _ = images.shape
    lb = geometry.plan(h, w, size)
    canvas = out if out is not None else torch.empty((n, 3, size, size), dtype=torch.float32, device=images.device)
    canvas.fill_(float(geometry.PAD_VALUE))
    region = canvas[:, :, lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w]
    x = images.permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels-last strides): no copy
    if (lb.new_h, lb.new_w) != (h, w):
        x = torch.nn.functional.interpolate(
            x.float(), size=(lb.new_h, lb.new_w), mode="bilinear", align_corners=False, antialias=False
        ).round_()
    region.copy_(x.flip(1))  # BGR -> RGB
    # A tensor divisor keeps true division (a Python scalar becomes a multiply by 1/255 on CUDA),
    # so the float32 values are exactly those of to_pixels for the same grey levels.
    return canvas.div_(torch.full((), 255.0, dtype=canvas.dtype, device=canvas.device))


def letterbox_many(batches: Sequence[torch.Tensor], size: int, out: torch.Tensor) -> np.ndarray:
    """Letterbox a list of NHWC batches (one per request) into `out[:total]`, in order.

    Consecutive batches of one image size are resized in one pass (a steady stream of camera
    frames arrives that way); `out` may be any float dtype, e.g. a CUDA graph's FP16 input.
    Returns the LETTERBOX rows, (total, 6) float32, from `geometry.plan`.
    """
    rows, start, i = [], 0, 0
    while i < len(batches):
        j = i + 1
        while j < len(batches) and batches[j].shape[1:3] == batches[i].shape[1:3]:
            j += 1
        images = batches[i] if j == i + 1 else torch.cat(list(batches[i:j]))
        n, h, w = images.shape[:3]
        letterbox_batch(images, size, out=out[start : start + n])
        rows.append(plan_rows(h, w, size, n))
        start, i = start + n, j
    return np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)


def plan_rows(h: int, w: int, size: int, n: int) -> np.ndarray:
    """The LETTERBOX rows of `n` images of one size, (n, 6) float32, from `geometry.plan`."""
    return np.repeat(geometry.plan(h, w, size).as_array()[None], n, axis=0)


class LetterboxGraphs:
    """`letterbox_batch` replayed from a CUDA graph per batch shape (images, height, width).

    Eager, the letterbox is up to eight kernel launches and their Python for a few microseconds of GPU
    work, which at concurrency 1 is time on every request's path. A camera or a client sends the
    same frame size again and again, so a shape seen twice is captured (a one-off shape is not
    worth a capture) and then costs one copy into the graph's input and one replay. Each capture
    is checked against the eager letterbox and refused, for good, on any difference. Graphs share
    one memory pool (replays never overlap and keep nothing alive), the least recently used one
    goes past `max_graphs`, and batches over `max_bytes` of pixels stay eager. The shapes seen once
    are forgotten past `max_seen`, so clients sending ever-new sizes cannot grow the set forever.
    """

    def __init__(
        self, size: int, out: torch.Tensor, max_graphs: int = 8, max_bytes: int = 1 << 24, max_seen: int = 4096
    ) -> None:
        self.size, self.out = size, out
        self.max_graphs, self.max_bytes, self.max_seen = max_graphs, max_bytes, max_seen
        self.graphs: OrderedDict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = OrderedDict()
        self.seen: set[tuple[int, int, int]] = set()
        self.refused: dict[tuple[int, int, int], str] = {}  # shape -> why it stays eager
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, batches: Sequence[torch.Tensor]) -> bool:
        """Letterbox `batches` (NHWC uint8 on out's GPU, one per request) into `out[:total]` from a
        graph when one fits; False when the caller should run `letterbox_many` instead."""
        h, w = batches[0].shape[1:3]
        if any(b.shape[1:3] != (h, w) for b in batches[1:]):
            return False
        key = (sum(b.shape[0] for b in batches), h, w)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(key, batches)
            if entry is None:
                return False
        self.graphs.move_to_end(key)
        graph, static = entry
        _copy_into(static, batches)
        graph.replay()
        return True

    def _capture(
        self, key: tuple[int, int, int], batches: Sequence[torch.Tensor]
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        n, h, w = key
        if key in self.refused or n > self.out.shape[0] or n * h * w * 3 > self.max_bytes:
            return None
        if key not in self.seen:
            if len(self.seen) >= self.max_seen:
                self.seen.clear()
            self.seen.add(key)
            return None
        static = torch.empty((n, h, w, 3), dtype=torch.uint8, device=self.out.device)
        _copy_into(static, batches)
        target = self.out[:n]
        side = torch.cuda.Stream(self.out.device)
        side.wait_stream(torch.cuda.current_stream(self.out.device))
        try:
            with torch.cuda.stream(side):
                letterbox_batch(static, self.size, out=target)  # warm-up on the capturing stream
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=side, capture_error_mode="thread_local"):
                    letterbox_batch(static, self.size, out=target)
            torch.cuda.current_stream(self.out.device).wait_stream(side)
            graph.replay()
            replayed = target.clone()
            letterbox_batch(static, self.size, out=target)
            if not torch.equal(replayed, target):
                raise RuntimeError("the replay differs from the eager letterbox")
        except RuntimeError as e:  # a failed or wrong capture leaves this shape eager, which is correct
            torch.cuda.current_stream(self.out.device).wait_stream(side)
            self.refused[key] = f"{type(e).__name__}: {str(e)[:200]}"
            return None
        self.graphs[key] = (graph, static)
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return graph, static


def _copy_into(static: torch.Tensor, batches: Sequence[torch.Tensor]) -> None:
    """Each request's images into consecutive rows of `static`."""
    if len(batches) == 1:
        static.copy_(batches[0])
        return
    start = 0
    for b in batches:
        static[start : start + b.shape[0]].copy_(b)
        start += b.shape[0]


# --------------------------------------------------------------------------------------------------
# Postprocess


def xywh2xyxy(xywh: torch.Tensor) -> torch.Tensor:
    """`nms.xywh2xyxy` term by term (half-size subtracted/added), on (n, 4) rows."""
    half = xywh[:, 2:] / 2
    return torch.cat((xywh[:, :2] - half, xywh[:, :2] + half), 1)


@dataclass(frozen=True)
class BatchDetections:
    """Detections of a batch in network-input pixels, grouped by image, best score first."""

    boxes: torch.Tensor  # (k, 4) float32 xyxy
    scores: torch.Tensor  # (k,) float32
    classes: torch.Tensor  # (k,) int64
    image: torch.Tensor  # (k,) int64, non-decreasing

    def to_numpy(self, n: int) -> list[Detections]:
        """Per-image `Detections` after one device-to-host copy of everything."""
        packed = torch.cat(
            (self.boxes, self.scores[:, None], self.classes[:, None].float(), self.image[:, None].float()), 1
        ).cpu().numpy()
        counts = np.bincount(packed[:, 6].astype(np.int64), minlength=n)
        out, start = [], 0
        for c in counts:
            rows = packed[start : start + c]
            out.append(Detections(rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5].astype(np.int32)))
            start += c
        return out


def _multi_label_candidates(
    raw: torch.Tensor, conf: float | torch.Tensor, multi_label: Sequence[bool]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, anchor, class, score) of every candidate when some image asks for multi-label.

    Multi-label images keep every (anchor, class) pair above the threshold, the others their best
    class only; pairs come anchor-major within an image, like `nms._candidates`.
    """
    n, rows, anchors = raw.shape
    s3 = raw[:, 4:, :].transpose(1, 2)  # (n, anchors, nc) view
    thr = conf if isinstance(conf, float) else conf[:, :, None]
    mask = s3 > thr
    if not all(multi_label):
        best = torch.zeros_like(mask).scatter_(2, s3.argmax(2, keepdim=True), True)
        flags = torch.tensor(list(multi_label), device=raw.device)[:, None, None]
        mask = torch.where(flags, mask, mask & best)
    if anchors * (rows - 4) > MAX_NMS:  # each image's MAX_NMS best pairs at most
        flat = s3.masked_fill(~mask, float("-inf")).reshape(n, -1)
        capped = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(MAX_NMS, dim=1).indices, True)
        mask &= capped.view_as(mask)
    img, anchor, cls = mask.nonzero(as_tuple=True)
    return img, anchor, cls, s3[img, anchor, cls]


def best_class(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's best class score and class, (n, anchors) each, as `nms.decode` ranks them."""
    return raw[:, 4:, :].max(1)


@dataclass(frozen=True)
class NetworkOutput:
    """What the GPU pipeline's CUDA graphs leave after the network (`network_tail`).

    Computed inside the graph, the cast, the per-anchor best class and the finiteness check cost
    no launches of their own, and the check needs no synchronisation of its own either.
    """

    raw: torch.Tensor  # (b, 4 + nc, anchors) float32
    scores: torch.Tensor  # (b, anchors) best class score
    classes: torch.Tensor  # (b, anchors) int64
    finite: torch.Tensor  # () bool: every value of raw is finite

    def head(self, n: int) -> NetworkOutput:
        """The first `n` images (the check still covers the whole bucket, padding included)."""
        return NetworkOutput(self.raw[:n], self.scores[:n], self.classes[:n], self.finite)


def network_tail(out: torch.Tensor) -> NetworkOutput:
    """The network output as NMS reads it: float32, best class per anchor, and whether it is finite."""
    raw = out.float()
    scores, classes = best_class(raw)
    return NetworkOutput(raw, scores, classes, torch.isfinite(raw).all())


def decode_batch(
    raw: torch.Tensor, conf: Sequence[float], iou: Sequence[float], max_det: Sequence[int],
    multi_label: Sequence[bool] | None = None, best: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> BatchDetections:
    """`nms.decode` for every image of a (n, 4 + nc, anchors) batch with one NMS launch per IoU value.

    Thresholds are per image. Images are kept apart in one NMS by adding a per-image offset in
    float64 on top of Ultralytics' float32 class offset, so every box is compared exactly as
    `nms.decode` compares it, yet a batch costs a few kernel launches and three host
    synchronisations (candidates, NMS, result) instead of a loop over images. Thresholds shared
    by the whole batch (the usual case) stay Python scalars: no host-to-device copies. `best` is
    `best_class(raw)` when the caller already has it (computed inside a CUDA graph).
    """
    import torchvision

    n, rows, anchors = raw.shape
    nc = rows - 4
    device = raw.device
    # strict '>' as Ultralytics
    thr = float(conf[0]) if len(set(conf)) == 1 else torch.tensor(list(conf), dtype=torch.float32).to(device)[:, None]
    if multi_label is not None and any(multi_label):
        img, anchor, cand_classes, cand_scores = _multi_label_candidates(raw, thr, multi_label)  # sync 1
    else:
        scores, classes = best if best is not None else best_class(raw)  # (n, anchors)
        mask = scores > thr
        if anchors > MAX_NMS:  # keep only each image's MAX_NMS best candidates
            top = scores.masked_fill(~mask, float("-inf")).topk(MAX_NMS, dim=1).indices
            capped = torch.zeros_like(mask)
            capped.scatter_(1, top, True)
            mask &= capped
        img, anchor = mask.nonzero(as_tuple=True)  # sync 1; anchor order within an image, as NumPy
        cand_scores, cand_classes = scores[img, anchor], classes[img, anchor]
    if img.numel() == 0:  # host tensors: nothing left to copy back, no further synchronisation
        empty = torch.zeros(0, dtype=torch.int64)
        return BatchDetections(torch.zeros((0, 4)), torch.zeros(0), empty, empty)
    boxes = xywh2xyxy(raw[img, :4, anchor].float())
    cand_scores = cand_scores.float()
    offset_boxes = boxes + (cand_classes[:, None] * MAX_WH).float()  # float32, like nms.decode
    if n > 1:  # images apart: offsets past any class offset; float64 keeps the float32 sums exact
        image_gap = float((nc + 2) * MAX_WH + 4096)
        separated = offset_boxes.double() + (img.double() * image_gap)[:, None]
        nms_scores = cand_scores.double()  # torchvision wants boxes and scores of one dtype
    else:
        separated, nms_scores = offset_boxes, cand_scores
    kept_parts = []
    for value in sorted(set(iou)):  # usually a single value: one NMS for the whole batch
        if len(set(iou)) == 1:
            kept_parts.append(torchvision.ops.nms(separated, nms_scores, float(value)))  # sync 2
            continue
        sel = torch.tensor([i for i, u in enumerate(iou) if u == value], device=device)
        idx = torch.isin(img, sel).nonzero(as_tuple=True)[0]
        kept_parts.append(idx[torchvision.ops.nms(separated[idx], nms_scores[idx], float(value))])
    if len(kept_parts) == 1:
        kept = kept_parts[0]  # descending score
    else:  # restore one global score order before grouping
        kept = torch.cat(kept_parts)
        kept = kept[torch.sort(cand_scores[kept], descending=True, stable=True).indices]
    if n == 1:
        kept = kept[: int(max_det[0])]
    else:  # group by image keeping score order, then cut each image at its max_det
        kept = kept[torch.sort(img[kept], stable=True).indices]
        kept_img = img[kept]
        counts = torch.bincount(kept_img, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(kept), device=device) - starts[kept_img]
        if len(set(max_det)) == 1:
            kept = kept[rank < int(max_det[0])]
        else:
            kept = kept[rank < torch.tensor(list(max_det), device=device)[kept_img]]
    return BatchDetections(boxes[kept], cand_scores[kept], cand_classes[kept], img[kept])


def postprocess_batch(
    raw: torch.Tensor, letterbox_rows: np.ndarray, limits: list[tuple[float, float, int]],
    multi_label: Sequence[bool] | None = None, best: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Detections]:
    """`postprocess.postprocess_one` for a batch: decode + NMS on raw's device, unletterbox on host."""
    conf, iou, max_det = zip(*limits)
    dets = decode_batch(raw, conf, iou, max_det, multi_label, best).to_numpy(raw.shape[0])
    return [
        Detections(geometry.unletterbox(d.boxes, letterbox_rows[i]), d.scores, d.classes) if len(d.scores) else d
        for i, d in enumerate(dets)
    ]


# --------------------------------------------------------------------------------------------------
# Detector


def load_network(path: str, device: torch.device, half: bool = True) -> tuple[torch.nn.Module, dict]:
    """The exported detector written by `gpu_export` on `device` (FP16 where asked), and the
    checkpoint facts recorded in it (imgsz, names)."""
    import json

    from torch.export.passes import move_to_device_pass

    extra = {FACTS_EXTRA: ""}
    # The head's anchor grid and strides are constants of the program, not buffers: `.to()` would
    # leave them on the CPU, moving the program puts them on `device`. `half()` leaves them float32
    # too, so the boxes are decoded in float32 around the FP16 network.
    net = move_to_device_pass(torch.export.load(path, extra_files=extra), device).module()
    text = extra[FACTS_EXTRA]
    facts = json.loads(text.decode() if isinstance(text, bytes) else text) if text else {}
    return (net.half() if half else net.float()), facts


def load_served_network(path: Path | str, device: torch.device, imgsz: int) -> torch.nn.Module:
    """`load_network` in FP16 as the GPU models serve it, with cudnn's autotuner on (every bucket
    has fixed shapes); ValueError when the artefact was exported for another input size."""
    torch.backends.cudnn.benchmark = True
    net, facts = load_network(str(path), device, half=True)
    if facts and int(facts["imgsz"]) != imgsz:
        raise ValueError(f"{path} was exported for imgsz {facts['imgsz']} but the config says {imgsz}: "
                         "rebuild the repository")
    return net


def compile_network(
    net: torch.nn.Module, imgsz: int, enabled: bool = True
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The network compiled by TorchInductor for the CUDA graphs to capture, and a line saying so.

    Inductor fuses the activations, concatenations and the head's decode around cuDNN's
    convolutions: on an H200 at 640 a batch-1 replay took 0.46 ms against 0.94 ms uncompiled, and
    batch 64 5.6 ms against 10.0 ms. Shapes stay static: each CUDA-graph bucket compiles once when
    `GraphedNetwork` warms it up (from the on-disk cache after the first load). Compiling needs
    Triton and a C compiler on the server; when it fails, or `enabled` is false, the network runs
    as exported, which is correct, only slower, and the line says why.
    """
    net = net.to(memory_format=torch.channels_last)  # the layout GraphedNetwork feeds it, before any guard
    if not enabled:
        return net, "network as exported (torch_compile is 0 in the config)"
    device = next(net.parameters()).device
    example = torch.zeros((1, 3, imgsz, imgsz), dtype=torch.float16, device=device)
    try:
        import torch._dynamo as dynamo

        # one compiled entry per CUDA-graph bucket; the default limit (8) is too close to the 7 buckets
        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 32)
        compiled = torch.compile(net, dynamic=False, fullgraph=True)
        with torch.inference_mode():
            compiled(example.contiguous(memory_format=torch.channels_last))  # compiles now, or fails here
        return compiled, "network compiled by TorchInductor"
    except Exception as e:  # noqa: BLE001 - any failure leaves the exported network, which is correct
        return net, f"network as exported: TorchInductor failed ({type(e).__name__}: {str(e)[:200]})"


def graph_buckets(text: str, max_batch: int) -> list[int]:
    """The config's `cuda_graph_batches` ("1,2,4,...") up to its max_batch_size (default: BUCKETS)."""
    buckets = [int(b) for b in text.split(",") if b] or list(BUCKETS)
    return [b for b in buckets if b <= max_batch]


class GraphedNetwork:
    """A network replayed from one CUDA graph per batch-size bucket.

    A batch is copied (and cast) into a static input buffer, padded up to the next bucket and
    replayed: one launch instead of ~200 kernels, which is what brings batch-1 latency close to
    the GPU time of the network itself. All graphs share one memory pool; that is safe because
    replays run one at a time on one stream and the caller copies the output out before the
    next replay (`__call__` returns a view into the graph's static output). With `tail`, each
    graph also runs `network_tail` on the output (`run_tail`), for a caller that reads it before
    the next replay.
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor], torch.Tensor],
        imgsz: int,
        device: torch.device,
        dtype: torch.dtype = torch.float16,
        buckets: Sequence[int] = BUCKETS,
        channels_last: bool = True,
        warmup: int = 3,
        tail: bool = False,
    ) -> None:
        self.buckets = tuple(sorted(buckets))
        self.device, self.dtype = device, dtype
        self.static_in = torch.zeros((self.buckets[-1], 3, imgsz, imgsz), dtype=dtype, device=device)
        self.static_in.normal_().clamp_(0, 1)  # real-looking data for cudnn's algorithm search
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[union-attr]

        def run(x: torch.Tensor) -> torch.Tensor:
            return net(x.contiguous(memory_format=fmt))

        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.static_out: dict[int, torch.Tensor] = {}
        self.static_tail: dict[int, NetworkOutput] = {}
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for b in reversed(self.buckets):  # largest first: the pool is sized once
                x = self.static_in[:b]
                for _ in range(warmup):
                    y = run(x)
                    if tail:
                        network_tail(y)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=side):
                    self.static_out[b] = run(x)
                    if tail:
                        self.static_tail[b] = network_tail(self.static_out[b])
                self.graphs[b] = graph
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)

    def check(self, eager: Callable[[torch.Tensor], torch.Tensor], tolerance: float = 0.02) -> None:
        """Every graph against the eager network on the same random input; raises on a mismatch.

        FP16 kernels chosen at capture may differ from eager ones in rounding, hence a tolerance
        relative to the output's scale; a NaN or a wrong buffer is far outside it.
        """
        with torch.inference_mode():
            for b in self.buckets:
                self.static_in[:b].uniform_()
                self.graphs[b].replay()
                got = self.static_out[b].float()
                want = eager(self.static_in[:b]).float()
                err = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-6)
                if not err <= tolerance:  # also catches NaN
                    raise RuntimeError(
                        f"CUDA graph for batch {b} disagrees with the network (relative error {err:.3g})")

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) -> (n, 4 + nc, anchors); n up to the largest bucket. A view: copy it out."""
        n = x.shape[0]
        b = self.bucket(n)
        self.static_in[:n].copy_(x)
        self.graphs[b].replay()
        return self.static_out[b][:n]

    def run_tail(self, n: int) -> NetworkOutput:
        """Replay on the first `n` rows the caller wrote into `static_in` (no input copy) and return
        the tail computed in the graph (built with `tail=True`): views, valid until the next replay."""
        b = self.bucket(n)
        self.graphs[b].replay()
        return self.static_tail[b].head(n)

    def replay(self, b: int) -> None:
        """Replay bucket `b` on whatever the static input holds (for timing the network alone)."""
        self.graphs[b].replay()
