"""The GPU JPEG decoder's last two steps (pipeline.jpeg_kernels: chroma upsampling, YCbCr -> BGR)
against OpenCV, bit for bit, on libjpeg-turbo's own component planes.

libjpeg-turbo's TurboJPEG library gives a file's planes as its inverse DCT leaves them
(tjDecompressToYUVPlanes); OpenCV decodes the same file with the same library to BGR. The kernel
must turn the first into the second exactly, for every chroma layout, odd sizes and the tiny
widths where libjpeg-turbo replicates instead of filtering. Without a GPU the kernel runs in
Triton's interpreter on CPU tensors (tests/conftest.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import cv2
import numpy as np
import pytest
import torch
from conftest import SAMPLES

from yolo_triton.pipeline import jpeg_kernels

# TurboJPEG's subsampling codes -> (luma samples per chroma sample across, down); None: greyscale
_TJ_SAMPLING = {0: (1, 1), 1: (2, 1), 2: (2, 2), 3: None, 4: (1, 2)}
LAYOUTS = {"4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
           "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:4:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440, "grey": None}
# (h, w), with chroma two samples wide or less too (replicated, not filtered)
SIZES = ((37, 53), (64, 48), (120, 161), (17, 5), (3, 4), (2, 3), (1, 1))


def _turbojpeg() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    ptr, data, i32 = ctypes.c_void_p, (ctypes.c_char_p, ctypes.c_ulong), ctypes.c_int
    lib.tjInitDecompress.restype = ptr
    lib.tjDecompressHeader3.argtypes = [ptr, *data] + [ctypes.POINTER(i32)] * 4
    lib.tjDecompressToYUVPlanes.argtypes = [ptr, *data, ctypes.POINTER(ptr), i32, ctypes.POINTER(i32), i32, i32]
    return lib


TURBOJPEG = _turbojpeg()
needs_turbojpeg = pytest.mark.skipif(TURBOJPEG is None, reason="needs libjpeg-turbo's TurboJPEG library (Debian: "
                                                                "libturbojpeg0; `make setup` installs it)")


def turbojpeg_planes(data: bytes) -> tuple[list[np.ndarray], tuple[int, int] | None, tuple[int, int]]:
    """(planes, chroma factors, (h, w)) of a JPEG as libjpeg-turbo's inverse DCT leaves them."""
    assert TURBOJPEG is not None
    handle = TURBOJPEG.tjInitDecompress()
    try:
        w, h, sampling, colourspace = (ctypes.c_int() for _ in range(4))
        header = map(ctypes.byref, (w, h, sampling, colourspace))
        assert TURBOJPEG.tjDecompressHeader3(handle, data, len(data), *header) == 0
        chroma = _TJ_SAMPLING[sampling.value]
        dims = jpeg_kernels.plane_dims(h.value, w.value, chroma)
        # TurboJPEG may write whole MCU rows past a plane's last row: room for them below each.
        full = [np.zeros((-(-r // 16) * 16 + 16, -(-c // 16) * 16 + 16), np.uint8) for r, c in dims]
        pointers = (ctypes.c_void_p * 3)(*[a.ctypes.data for a in full], *[None] * (3 - len(full)))
        strides = (ctypes.c_int * 3)(*[a.shape[1] for a in full], *[0] * (3 - len(full)))
        assert TURBOJPEG.tjDecompressToYUVPlanes(handle, data, len(data), pointers, w.value, strides, h.value, 0) == 0
    finally:
        TURBOJPEG.tjDestroy(ctypes.c_void_p(handle))
    return [a[:r, :c] for a, (r, c) in zip(full, dims)], chroma, (h.value, w.value)


def jpeg(h: int, w: int, layout: str) -> bytes:
    """bus.jpg shrunk to w x h, with noise so that every block has colour edges, in `layout`."""
    image = cv2.resize(cv2.imread(str(SAMPLES / "bus.jpg")), (w, h), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(h * 1000 + w).integers(-40, 40, image.shape)
    image = (image.astype(np.int32) + noise).clip(0, 255).astype(np.uint8)
    if LAYOUTS[layout] is None:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), [cv2.IMWRITE_JPEG_QUALITY, 85])
    else:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                LAYOUTS[layout]])
    assert ok
    return data.tobytes()


@needs_turbojpeg
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_upsampling_and_colour_conversion_give_opencvs_pixels_bit_for_bit(layout):
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    for h, w in SIZES:
        data = jpeg(h, w, layout)
        planes, chroma, hw = turbojpeg_planes(data)
        assert hw == (h, w)
        assert (chroma is None) == (layout == "grey")
        out = torch.empty((h, w, 3), dtype=torch.uint8, device=device)
        jpeg_kernels.ycc_to_bgr([torch.from_numpy(p).to(device) for p in planes], chroma, out)
        want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(out.cpu().numpy(), want, err_msg=f"{layout} {w}x{h}")
    # the layouts differ where it matters: a wrong upsampling would not pass by chance
    if layout not in ("grey", "4:4:4"):
        data = jpeg(120, 161, layout)
        planes, chroma, _ = turbojpeg_planes(data)
        out = torch.empty((120, 161, 3), dtype=torch.uint8, device=device)
        nearest = [planes[0]] + [np.repeat(np.repeat(p, chroma[1], 0), chroma[0], 1)[:120, :161] for p in planes[1:]]
        jpeg_kernels.ycc_to_bgr([torch.from_numpy(np.ascontiguousarray(p)).to(device) for p in nearest], (1, 1), out)
        want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert (out.cpu().numpy() != want).mean() > 0.05


def test_planes_too_small_for_the_image_are_refused():
    planes = [torch.zeros((8, 8), dtype=torch.uint8), torch.zeros((3, 4), dtype=torch.uint8),
              torch.zeros((3, 4), dtype=torch.uint8)]
    with pytest.raises(ValueError, match="too small"):
        jpeg_kernels.ycc_to_bgr(planes, (2, 2), torch.empty((8, 8, 3), dtype=torch.uint8))
