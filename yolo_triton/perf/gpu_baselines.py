"""The GPU benchmark's in-process baselines: Ultralytics' predict, the raw network, and the fused
pipeline's own stages, each on this machine's GPU 0 with the served artefact.

They are what a served figure is judged against (the floor no pipeline around the network can
beat, and what a user has without a server), measured in the benchmark's own process, apart
from the server and perf_analyzer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from yolo_triton import spec


def ultralytics_predict(weights: str, image: np.ndarray, imgsz: int, runs: int) -> dict:
    """Median wall time of predict() on one image, FP16 on GPU 0, after warm-up, and its box count."""
    import torch

    from yolo_triton.repository import export

    model = export.load(weights)  # seeded for a .yaml: the same weights the repository was built from

    def once() -> int:
        result = model.predict(image, imgsz=imgsz, quantize=16, device=0, verbose=False)  # = half=True
        torch.cuda.synchronize()
        return len(result[0].boxes)

    for _ in range(10):
        boxes = once()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        once()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)), "runs": runs,
            "boxes": boxes}


def raw_network(artefact: Path, imgsz: int, runs: int) -> dict:
    """CUDA-event timings of graph replays of the served artefact (FP16), batch 1 and 64."""
    import torch

    from yolo_triton.pipeline import torch_network

    device = torch.device("cuda", 0)
    net = torch_network.load_served_network(artefact, device, imgsz)
    out: dict = {}
    big = max(torch_network.BUCKETS)
    with torch.inference_mode():
        x1 = torch.rand((1, 3, imgsz, imgsz), device=device, dtype=torch.float16)
        for _ in range(5):
            net(x1)
        out["eager_b1_ms"] = _event_median(lambda: net(x1), runs)
        # as exported (the served path when torch_compile is 0), then compiled as served by default
        for prefix, enabled in (("exported_", False), ("", True)):
            fast, out[f"{prefix}note"] = torch_network.compile_network(net, imgsz, enabled)
            graphed = torch_network.GraphedNetwork(fast, imgsz, device, torch.float16, (1, big))
            out[f"{prefix}graph_b1_ms"] = _event_median(lambda g=graphed: g.replay(1), runs)
            b_ms = _event_median(lambda g=graphed: g.replay(big), max(runs // 10, 20))
            out[f"{prefix}graph_b{big}_ms"] = b_ms
            out[f"{prefix}graph_b{big}_img_s"] = big / b_ms * 1e3
        out["graph_batch"] = big
    return out


def _event_median(fn: Callable[[], object], runs: int) -> float:
    import torch

    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def pipeline_in_process(artefact: Path, imgsz: int, image: np.ndarray, runs: int) -> dict:
    """The fused pipeline's stages on one image already on the GPU: median ms per stage (synchronised
    after each) and the unsynchronised end-to-end median, as `pipeline_gpu` runs it."""
    import torch

    from yolo_triton.pipeline.gpu import STAGES, GpuPipeline

    device = torch.device("cuda", 0)
    pipeline = GpuPipeline(artefact, imgsz, device, (1,))
    frame = torch.from_numpy(image)[None].to(device)
    options = [[(spec.DEFAULT_CONF, spec.DEFAULT_IOU, spec.DEFAULT_MAX_DET)]], [[False]]
    with torch.inference_mode():
        total = []
        for _ in range(runs):
            t = time.perf_counter()
            pipeline([frame], *options)
            total.append((time.perf_counter() - t) * 1e3)
        per: dict[str, list[float]] = {k: [] for k in STAGES}
        for _ in range(runs):
            pipeline.times = {}
            pipeline([frame], *options)
            for k in STAGES:
                per[k].append(pipeline.times[k] * 1e3)
    return {"total_ms": statistics.median(total), **{f"{k}_ms": statistics.median(v) for k, v in per.items()}}
