"""The network on the GPU: the exported program loaded in FP16, compiled by TorchInductor, and
replayed from one CUDA graph per batch bucket (`GraphedNetwork`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from yolo_triton import spec
from yolo_triton.pipeline.torch_decode import best_class

# Batch sizes a CUDA graph is captured for (declared with the variant in spec); a batch is padded
# up to the next one. Powers of two keep the padding under 2x with only a few graphs to capture.
BUCKETS: tuple[int, ...] = tuple(int(b) for b in spec.CUDA_GRAPH_BATCHES.split(",") if int(b) <= spec.MAX_BATCH)
FACTS_EXTRA = "facts.json"  # extra file of the exported archive: the checkpoint facts it holds


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

    def check(self, eager: Callable[[torch.Tensor], torch.Tensor], tolerance: float = 0.01) -> None:
        """Every graph against the eager network on the same random input; raises on a mismatch.

        FP16 kernels chosen at capture may differ from eager ones in rounding, and on noise as
        input a few outputs of a network with large activations differ by a few percent of the
        output's scale (3% seen with the crowded-scene checkpoint); so the bound is on the mean
        error relative to the mean magnitude. A NaN, or a graph reading or writing a wrong
        buffer (an error of the order of the output itself), is far outside it.
        """
        with torch.inference_mode():
            for b in self.buckets:
                self.static_in[:b].uniform_()
                self.graphs[b].replay()
                got = self.static_out[b].float()
                want = eager(self.static_in[:b]).float()
                err = float((got - want).abs().mean()) / max(float(want.abs().mean()), 1e-6)
                if not (err <= tolerance and bool(torch.isfinite(got).all())):  # also catches NaN
                    raise RuntimeError(
                        f"CUDA graph for batch {b} disagrees with the network (mean relative error {err:.3g})")

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
