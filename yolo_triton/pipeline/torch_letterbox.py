"""The letterbox on the GPU: `letterbox_batch` ~ `geometry.letterbox` + `geometry.to_pixels`.

The plan comes from `geometry.plan`, the NumPy definition; the pixels from one Triton kernel per
request (`letterbox_kernels`), written straight into the network's input buffer, whatever its
float dtype. tests/test_gpu.py checks it against OpenCV's letterbox on CPU tensors (the kernel in
Triton's interpreter), so CI guards it without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from yolo_triton.pipeline import geometry, letterbox_kernels


def letterbox_batch(images: torch.Tensor, size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Same-size BGR uint8 NHWC images -> letterboxed RGB NCHW in [0, 1] (float32 unless `out` is given).

    Equals `to_pixels(letterbox(img))` for each image up to bilinear rounding (OpenCV's uint8
    resize uses fixed-point weights; here the float result is rounded to the nearest level, so a
    pixel differs by at most one level).
    """
    n = images.shape[0]
    canvas = out if out is not None else torch.empty((n, 3, size, size), dtype=torch.float32, device=images.device)
    letterbox_kernels.letterbox_into(images, canvas)
    return canvas


def letterbox_many(batches: Sequence[torch.Tensor], out: torch.Tensor) -> np.ndarray:
    """Letterbox a list of NHWC batches (one per request, any sizes) into `out[:total]`, in order;
    `out` (n, 3, S, S) may be any float dtype, e.g. a CUDA graph's FP16 input. Returns the
    LETTERBOX rows, (total, 6) float32, from `geometry.plan`."""
    rows, start = [], 0
    for images in batches:
        n = images.shape[0]
        lb = letterbox_kernels.letterbox_into(images, out[start : start + n])
        rows.append(np.repeat(lb.as_array()[None], n, axis=0))
        start += n
    return np.concatenate(rows) if rows else np.zeros((0, 6), np.float32)


STAGING_BYTES = 256 << 20  # frames one replay can letterbox: 68 of 1280x1024, 43 of 1920x1080


class GraphedLetterbox:
    """The fused pipeline's letterbox, replayed from one CUDA graph per batch bucket.

    Launching a Triton kernel from Python costs more host time than the kernel takes on the GPU,
    and at concurrency 1 that time passes before the network can start. Here each request's frames
    are copied into one staging buffer (a copy apiece, on the GPU), each image's plan is written
    into a pinned table (`letterbox_kernels.table_rows`), and one replay copies the table in and
    runs `letterbox_table` over every image of the bucket, whatever their sizes, into `out`. A
    batch whose frames do not fit the staging buffer is letterboxed by `letterbox_many` instead:
    the same pixels, one launch per request.
    """

    def __init__(self, out: torch.Tensor, buckets: Sequence[int], staging_bytes: int = STAGING_BYTES) -> None:
        if not 0 < staging_bytes < 1 << 31:  # the table holds byte offsets as int32
            raise ValueError(f"staging_bytes must be in (0, 2 GiB), got {staging_bytes}")
        device = out.device
        self.out, self.buckets = out, tuple(sorted(buckets))
        top = self.buckets[-1]
        self.staging = torch.zeros(staging_bytes, dtype=torch.uint8, device=device)
        self.params_host = torch.zeros((top, letterbox_kernels.WIDTH), dtype=torch.int32, pin_memory=True)
        self.params = torch.zeros((top, letterbox_kernels.WIDTH), dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for b in self.buckets:
                letterbox_kernels.letterbox_table(self.staging, self.params[:b], out[:b])  # compiled before capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side):
                    self.params[:b].copy_(self.params_host[:b], non_blocking=True)
                    letterbox_kernels.letterbox_table(self.staging, self.params[:b], out[:b])
                self.graphs[b] = graph
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)

    def check(self) -> None:
        """Raise RuntimeError unless a replay writes what `letterbox_many` writes, bit for bit: two
        requests of different sizes (two images, then one), in the smallest bucket of three or more."""
        gen = torch.Generator(device=self.staging.device).manual_seed(0)
        frames = [torch.randint(0, 256, shape, dtype=torch.uint8, device=self.staging.device, generator=gen)
                  for shape in ((2, 48, 64, 3), (1, 108, 81, 3))]
        n = min(3, self.buckets[-1])
        frames = frames if n == 3 else [frames[0][:n]]
        with torch.inference_mode():
            rows = self(frames)
            got = self.out[:n].clone()
            want = torch.empty_like(got)
            if not (np.array_equal(rows, letterbox_many(frames, want)) and torch.equal(got, want)):
                raise RuntimeError("the letterbox graph's replay differs from the letterbox kernel's launches")

    def __call__(self, batches: Sequence[torch.Tensor]) -> np.ndarray:
        """`letterbox_many(batches, out)`: the same pixels in `out[:total]` and the same rows."""
        sizes = [b.numel() for b in batches]
        total = sum(b.shape[0] for b in batches)
        if sum(sizes) > self.staging.numel() or total > self.buckets[-1]:
            return letterbox_many(batches, self.out)
        b = next(x for x in self.buckets if x >= total)
        table = self.params_host.numpy()
        rows = np.empty((total, 6), np.float32)
        offset, i = 0, 0
        for images, nbytes in zip(batches, sizes):
            n, h, w, _ = images.shape
            self.staging[offset : offset + nbytes].view(images.shape).copy_(images, non_blocking=True)
            lb = geometry.plan(h, w, self.out.shape[-1])
            letterbox_kernels.table_rows(table[i : i + n], offset, h, w, lb)
            rows[i : i + n] = lb.as_array()
            offset += nbytes
            i += n
        table[total:b] = 0  # padding images: nothing read, nothing written
        self.graphs[b].replay()
        return rows


def graphed_or_none(out: torch.Tensor, buckets: Sequence[int]) -> tuple[GraphedLetterbox | None, str]:
    """`GraphedLetterbox` into `out`, checked (`GraphedLetterbox.check`), and a line saying so;
    (None, why) when it fails to capture or disagrees: the caller then launches the kernel per
    request (`letterbox_many`), the same pixels, and keeps serving."""
    try:
        graphed = GraphedLetterbox(out, buckets)
        graphed.check()
        return graphed, "letterbox: one CUDA graph replay per execute"
    except Exception as e:  # noqa: BLE001 - the per-request launches give the same pixels
        return None, f"letterbox: a kernel launch per request (the graph failed: {type(e).__name__}: {str(e)[:200]})"
