"""Encoded images decoded for the GPU models: JPEG by nvJPEG on the GPU, in one batched call;
PNG, WebP and the JPEGs nvJPEG does not take (CMYK, 12-bit, arithmetic-coded) by OpenCV on the host.

Headers are checked first for every file of the request (pipeline.encoded: format, limits,
truncation), so nothing is decoded for a request that is refused. The result is what the IMAGE
path gets: BGR uint8 NHWC on the GPU, EXIF orientation applied by the same table as on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torchvision.io as tvio

from yolo_triton.pipeline import encoded
from yolo_triton.pipeline.validation import InputError


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """An HWC tensor as displayed (encoded.ORIENTATIONS, the table the CPU path uses)."""
    transpose, flip_rows, flip_cols = encoded.ORIENTATIONS[orientation]
    if transpose:
        image = image.transpose(0, 1)
    dims = [d for d, flip in ((0, flip_rows), (1, flip_cols)) if flip]
    return image.flip(dims) if dims else image


def _nvjpeg(files: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    """RGB CHW tensors on `device`, one batched nvJPEG call (torchvision >= 0.19 takes a list)."""
    data = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    return tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, device=device)


def warm_up(device: torch.device) -> None:
    """Decode one small JPEG with nvJPEG now, while the model loads.

    nvJPEG creates its handle, its state and its device buffers at the first call. In a process
    that has captured CUDA graphs, first-time work of that kind coincided with broken replays
    (docs/benchmarks.md, "Found and fixed"), so a model that decodes with nvJPEG does it once
    before any graph is captured, as GpuPipeline does for every other eager op.
    """
    ok, jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    if not ok:  # cannot happen: OpenCV always encodes a plain grey image
        raise RuntimeError("could not encode the nvJPEG warm-up image")
    _nvjpeg([jpeg.tobytes()] * 2, device)
    torch.cuda.synchronize(device)


def decode_all(files: Sequence[bytes], device: torch.device, nvjpeg: bool = True) -> list[torch.Tensor]:
    """Every file of a request -> (1, H, W, 3) BGR uint8 on `device`, in order; InputError naming
    the first file that is refused. Without `nvjpeg` every file is decoded on the host."""
    headers = [encoded.read_header(f, i) for i, f in enumerate(files)]
    out: list[torch.Tensor | None] = [None] * len(files)
    gpu = [i for i, h in enumerate(headers) if h.nvjpeg] if nvjpeg else []
    if gpu:
        try:
            decoded = _nvjpeg([files[i] for i in gpu], device)
        except RuntimeError:  # one bad file fails the batched call: find it, decoding one by one
            decoded = []
            for i in gpu:
                try:
                    decoded += _nvjpeg([files[i]], device)
                except RuntimeError as e:
                    raise encoded.refuse(i, f"corrupt jpeg: nvJPEG could not decode it ({e})") from None
        for i, rgb in zip(gpu, decoded):
            encoded.check_decoded(rgb.shape[1:], headers[i], i)
            out[i] = orient(rgb.flip(0).permute(1, 2, 0), headers[i].orientation).contiguous()[None]
    for i, h in enumerate(headers):
        if out[i] is None:
            out[i] = torch.from_numpy(encoded.decode(files[i], h, i)).to(device)[None]
    if any(t is None for t in out):  # cannot happen: every file went one way or the other
        raise InputError("internal: an encoded image was not decoded")
    return [t for t in out if t is not None]
