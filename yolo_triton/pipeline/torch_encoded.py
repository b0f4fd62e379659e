"""Encoded images decoded for the GPU models: JPEG on the GPU (nvJPEG's planes, finished as
libjpeg-turbo finishes them, within MAX_LEVELS_OFF of OpenCV's pixels or not used); PNG, WebP and
the JPEGs the GPU path does not take (progressive, RGB or CMYK, 12-bit, arithmetic-coded, unusual
subsampling) by OpenCV on the host.

Headers are checked first for every file of the request (pipeline.encoded: format, limits,
truncation), so nothing is decoded for a request that is refused. The result is what the IMAGE
path gets: BGR uint8 NHWC on the GPU, EXIF orientation applied by the same table as on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from yolo_triton.pipeline import encoded, jpeg_kernels, nvjpeg


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """An HWC tensor as displayed (encoded.ORIENTATIONS, the table the CPU path uses)."""
    transpose, flip_rows, flip_cols = encoded.ORIENTATIONS[orientation]
    if transpose:
        image = image.transpose(0, 1)
    dims = [d for d, flip in ((0, flip_rows), (1, flip_cols)) if flip]
    return image.flip(dims) if dims else image


class GpuJpeg:
    """JPEG on the GPU: nvJPEG's component planes (pipeline.nvjpeg), then libjpeg-turbo's chroma
    upsampling and colour conversion in one kernel (jpeg_kernels). One per model
    instance; `decode` queues work on the current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._nvjpeg = nvjpeg.Decoder(device)

    def decode(self, data: bytes, header: encoded.Header, index: int) -> torch.Tensor | None:
        """One checked file (header.nvjpeg) -> (H, W, 3) BGR uint8 on the GPU, as stored (before
        orientation); None where nvJPEG reads the file otherwise than its header says (the host
        decodes it then); InputError where nvJPEG cannot decode it."""
        try:
            css, dims = self._nvjpeg.info(data)
            want = jpeg_kernels.plane_dims(header.height, header.width, header.chroma)
            if nvjpeg.SUBSAMPLING.get(css, False) != header.chroma or dims != want:
                return None
            planes = self._nvjpeg.planes(data, dims)
        except nvjpeg.NvJpegError as e:
            raise encoded.EncodedImageError(index, f"corrupt jpeg: nvJPEG could not decode it ({e})") from None
        out = torch.empty((header.height, header.width, 3), dtype=torch.uint8, device=self.device)
        jpeg_kernels.ycc_to_bgr(planes, header.chroma, out)
        return out

    def check(self, side: int = 2048) -> int:
        """Decode large JPEGs of every chroma layout and a greyscale one now, while the model loads,
        and return the largest difference from OpenCV's pixels, in grey levels.

        nvJPEG allocates its buffers at the first call and grows them for larger images. In a
        process that has captured CUDA graphs, first-time work of that kind coincided with broken
        replays (docs/benchmarks.md, "Found and fixed"), so this runs before any capture, as
        GpuPipeline does for every other eager op, on frames large enough that common sizes decode
        without growing the buffers. Every chroma layout of the kernel is compiled here too.
        """
        frame = _test_frame(side)
        files = [cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, s])[1] for s in _SAMPLINGS]
        files.append(cv2.imencode(".jpg", frame[:64, :64, 0])[1])
        worst = 0
        for data in (f.tobytes() for f in files):
            header = encoded.read_header(data, 0)
            image = self.decode(data, header, 0)
            if image is None:
                raise RuntimeError("nvJPEG reads its own test image otherwise than its header says")
            want = torch.from_numpy(encoded.decode(data, header, 0)).to(self.device)
            worst = max(worst, int((image.int() - want.int()).abs().max()))
        torch.cuda.synchronize(self.device)
        return worst


def _test_frame(side: int) -> np.ndarray:
    """Gradients, 16-pixel squares of saturated colours (edges where chroma upsampling shows) and
    mild noise: every case of the kernel, at a fraction of the Huffman work of pure noise."""
    ramp = (np.arange(side, dtype=np.int32) * 127 // side).astype(np.int16)
    cells = np.arange(side, dtype=np.int16) // 16
    squares = ((cells[:, None] + cells[None, :]) % 7)[..., None] * np.array([37, 91, 151], np.int16) % 256 // 2
    frame = squares + np.random.default_rng(0).integers(-8, 9, (side, side, 3), dtype=np.int16)
    frame[..., 0] += ramp[None, :]
    frame[..., 1] += ramp[:, None]
    return np.clip(frame, 0, 255).astype(np.uint8)


_SAMPLINGS = (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440)
# The GPU decoder is used where it gives OpenCV's pixels to within this many grey levels (its
# inverse DCT is nvJPEG's, the rest libjpeg-turbo's arithmetic).
MAX_LEVELS_OFF = 1


def gpu_jpeg_or_none(device: torch.device, wanted: bool) -> tuple[GpuJpeg | None, str]:
    """The model's JPEG decoder and its load line: GpuJpeg where wanted and it matches OpenCV at
    load (GpuJpeg.check), else None (the host decodes) with the reason."""
    if not wanted:
        return None, "JPEG: decoded on the host (config nvjpeg: \"0\")"
    try:
        gpu = GpuJpeg(device)
        worst = gpu.check()
    except Exception as e:  # noqa: BLE001 - whatever breaks an optional accelerator, the host decodes instead
        return None, f"JPEG: decoded on the host, the GPU decoder failed its load check ({type(e).__name__}: {e})"
    if worst > MAX_LEVELS_OFF:
        return None, (f"JPEG: decoded on the host, the GPU decoder's pixels were {worst} grey levels off "
                      f"OpenCV's (at most {MAX_LEVELS_OFF} allowed)")
    return gpu, f"JPEG: nvJPEG planes + libjpeg-turbo's upsampling on the GPU, {worst} grey levels off OpenCV at load"


def decode_all(files: Sequence[bytes], device: torch.device, gpu: GpuJpeg | None = None) -> list[torch.Tensor]:
    """Every file of a request -> (1, H, W, 3) BGR uint8 on `device`, in order; InputError naming
    the first file that is refused. Headers are all checked before anything is decoded
    (`encoded.read_headers`, the request's pixel limit included). JPEGs the GPU decoder takes
    (header.nvjpeg) go to `gpu` where given; everything else is decoded on the host, one file at
    a time, and leaves host memory once uploaded."""
    headers = encoded.read_headers(files)
    out = []
    for i, (data, header) in enumerate(zip(files, headers)):
        image = gpu.decode(data, header, i) if gpu is not None and header.nvjpeg else None
        if image is None:
            out.append(torch.from_numpy(encoded.decode(data, header, i)).to(device)[None])
        else:
            out.append(orient(image, header.orientation).contiguous()[None])
    return out
