"""nvJPEG's C API through ctypes: a JPEG's component planes on the GPU, as the inverse DCT leaves
them, before any chroma upsampling or colour conversion.

Why not `torchvision.io.decode_jpeg(device="cuda")`: it asks nvJPEG for RGB, and nvJPEG's chroma
upsampling is not libjpeg-turbo's (docs/benchmarks.md: it moved boxes). torchvision offers no
planar output, so the few nvJPEG calls needed are made here, and jpeg_kernels finishes the
decode with libjpeg-turbo's arithmetic.

The library is the one the process already loaded (torchvision links it), else the first found
in pip's `nvidia` packages, torchvision's bundled libraries or a CUDA toolkit. Each decoder holds
its own nvJPEG handle and state: one per model instance, used by one thread at a time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

import torch

OUTPUT_YUV = 1  # nvjpegOutputFormat_t: planar components, chroma at its own resolution
OUTPUT_Y = 2  # the luma plane alone (greyscale files)
MAX_COMPONENT = 4
# nvjpegChromaSubsampling_t -> (luma samples per chroma sample across, down); None: greyscale
SUBSAMPLING: dict[int, tuple[int, int] | None] = {0: (1, 1), 1: (2, 1), 2: (2, 2), 3: (1, 2), 6: None}
_ROW_ALIGN = 64  # bytes; plane rows start aligned, as nvJPEG's own allocations do
_HEIGHT_ALIGN = 16  # rows: room for a whole MCU row below the image, whatever a decoder writes there


class NvJpegError(RuntimeError):
    """nvJPEG refused a call; `status` is its nvjpegStatus_t."""

    def __init__(self, call: str, status: int) -> None:
        super().__init__(f"{call} returned nvJPEG status {status}")
        self.status = status


class _Image(ctypes.Structure):
    """nvjpegImage_t: a device pointer and a row pitch per component."""

    _fields_ = [("channel", ctypes.c_void_p * MAX_COMPONENT), ("pitch", ctypes.c_size_t * MAX_COMPONENT)]


def _loaded_in_process() -> list[str]:
    """libnvjpeg files this process has mapped already (torchvision's image extension links one)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "libnvjpeg" in line and "/" in line})
    except OSError:
        return []


def library_candidates() -> list[str]:
    """Where libnvjpeg may be, in the order tried."""
    found = _loaded_in_process()
    for base in sys.path:
        found += sorted(glob.glob(os.path.join(base, "nvidia", "**", "libnvjpeg.so*"), recursive=True))
        found += sorted(glob.glob(os.path.join(base, "torchvision*", "libnvjpeg*.so*")))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            found += sorted(glob.glob(os.path.join(home, "lib64", "libnvjpeg.so*")))
    by_name = ctypes.util.find_library("nvjpeg")
    if by_name:
        found.append(by_name)
    return list(dict.fromkeys(found))


def _load() -> ctypes.CDLL:
    errors = []
    for path in library_candidates():
        try:
            lib = ctypes.CDLL(path)
            lib.nvjpegCreateSimple  # noqa: B018 - the symbol proves it is nvJPEG
            return lib
        except (OSError, AttributeError) as e:
            errors.append(f"{path}: {e}")
    raise OSError("libnvjpeg not found (pip's nvidia-nvjpeg, torchvision or a CUDA toolkit provide it)"
                  + ("; tried " + "; ".join(errors) if errors else ""))


class Decoder:
    """JPEG bytes -> component planes on one GPU, on the current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._lib = lib = _load()
        ptr, size, i32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)
        lib.nvjpegCreateSimple.argtypes = [ctypes.POINTER(ptr)]
        lib.nvjpegJpegStateCreate.argtypes = [ptr, ctypes.POINTER(ptr)]
        lib.nvjpegGetImageInfo.argtypes = [ptr, ctypes.c_char_p, size, i32, i32, i32, i32]
        lib.nvjpegDecode.argtypes = [ptr, ptr, ctypes.c_char_p, size, ctypes.c_int, ctypes.POINTER(_Image), ptr]
        self._handle, self._state = ptr(), ptr()
        with torch.cuda.device(device):  # nvJPEG works on the current CUDA device
            self._check("nvjpegCreateSimple", lib.nvjpegCreateSimple(ctypes.byref(self._handle)))
            self._check("nvjpegJpegStateCreate", lib.nvjpegJpegStateCreate(self._handle, ctypes.byref(self._state)))

    @staticmethod
    def _check(call: str, status: int) -> None:
        if status != 0:
            raise NvJpegError(call, status)

    def info(self, data: bytes) -> tuple[int, list[tuple[int, int]]]:
        """(nvjpegChromaSubsampling_t, [(height, width) per component])."""
        n, css = ctypes.c_int(), ctypes.c_int()
        widths, heights = (ctypes.c_int * MAX_COMPONENT)(), (ctypes.c_int * MAX_COMPONENT)()
        self._check("nvjpegGetImageInfo", self._lib.nvjpegGetImageInfo(
            self._handle, data, len(data), ctypes.byref(n), ctypes.byref(css), widths, heights))
        return css.value, [(heights[c], widths[c]) for c in range(n.value)]

    def planes(self, data: bytes, dims: list[tuple[int, int]]) -> list[torch.Tensor]:
        """The components of `data` as (height, width) uint8 views on the GPU, `dims` from `info`
        (one for a greyscale file, three for YCbCr). Queued on the current stream: the views are
        ready for work queued after them on it."""
        pitches = [-(-w // _ROW_ALIGN) * _ROW_ALIGN for _, w in dims]
        rows = [-(-h // _HEIGHT_ALIGN) * _HEIGHT_ALIGN for h, _ in dims]
        buffer = torch.empty(sum(p * r for p, r in zip(pitches, rows)), dtype=torch.uint8, device=self.device)
        image, views, at = _Image(), [], 0
        for c, ((h, w), pitch, r) in enumerate(zip(dims, pitches, rows)):
            plane = buffer[at : at + pitch * r].view(r, pitch)
            image.channel[c], image.pitch[c] = plane.data_ptr(), pitch
            views.append(plane[:h, :w])
            at += pitch * r
        stream = torch.cuda.current_stream(self.device).cuda_stream
        self._check("nvjpegDecode", self._lib.nvjpegDecode(
            self._handle, self._state, data, len(data), OUTPUT_Y if len(dims) == 1 else OUTPUT_YUV,
            ctypes.byref(image), ctypes.c_void_p(stream)))
        return views
