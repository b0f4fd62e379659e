"""The last two steps of a JPEG decode in one Triton kernel, as libjpeg-turbo does them: chroma
upsampling and YCbCr -> BGR, from the component planes nvJPEG writes (pipeline.nvjpeg).

Why not nvJPEG's own BGR output: nvJPEG upsamples chroma otherwise than libjpeg-turbo (which
OpenCV, Ultralytics' reader and the CPU models use), and at colour edges its pixels differ by
tens of grey levels, enough to move boxes (docs/benchmarks.md). The planes themselves are the
inverse DCT's output; the two steps after it are written here with libjpeg-turbo's integer
arithmetic. On libjpeg-turbo's own planes the kernel gives OpenCV's pixels bit for bit
(tests/test_jpeg_kernels.py); on nvJPEG's, the difference left is that of the two inverse DCTs,
which torch_encoded.GpuJpeg.check measures at load:

- fancy upsampling (jdsample.c): h2v2 is a triangle filter, 3/4 of the nearer and 1/4 of the
  farther sample in each direction, in sixteenths with biases 8 and 7; h2v1 and h1v2 in quarters
  with biases 1 and 2. Edges repeat the outermost sample, and a component two samples wide or
  less is replicated instead (libjpeg-turbo's own rule).
- colour conversion (jdcolor.c): fixed point with 16 fraction bits, tables of
  `FIX(1.40200)`, `FIX(1.77200)`, `-FIX(0.71414)` and `-FIX(0.34414)`, clamped to 0..255.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024  # output pixels per program on the GPU
SCALEBITS = 16
ONE_HALF = 1 << (SCALEBITS - 1)


def _fix(x: float) -> int:
    return int(x * (1 << SCALEBITS) + 0.5)


CR_R, CB_B, CR_G, CB_G = _fix(1.40200), _fix(1.77200), _fix(0.71414), _fix(0.34414)


@triton.jit
def _sample(plane, pitch, r, c, mask):
    return tl.load(plane + r * pitch + c, mask=mask, other=0).to(tl.int32)


@triton.jit
def _chroma(plane, pitch, oy, ox, ch, cw, mask, HS: tl.constexpr, VS: tl.constexpr, FANCY: tl.constexpr):
    """The chroma sample of output pixel (oy, ox), upsampled from a (ch, cw) plane."""
    cy = oy // VS
    cx = ox // HS
    near = _sample(plane, pitch, cy, cx, mask)
    if FANCY and (HS == 2 or VS == 2):
        # The neighbour on each upsampled axis: the previous sample for an even output index, the
        # next one for an odd index, clamped (libjpeg-turbo repeats the edge sample).
        even_x = (ox % 2) == 0
        even_y = (oy % 2) == 0
        if HS == 2 and VS == 2:
            ny = tl.where(even_y, tl.maximum(cy - 1, 0), tl.minimum(cy + 1, ch - 1))
            nx = tl.where(even_x, tl.maximum(cx - 1, 0), tl.minimum(cx + 1, cw - 1))
            this_col = 3 * near + _sample(plane, pitch, ny, cx, mask)
            next_col = 3 * _sample(plane, pitch, cy, nx, mask) + _sample(plane, pitch, ny, nx, mask)
            near = (3 * this_col + next_col + tl.where(even_x, 8, 7)) >> 4
        elif HS == 2:
            nx = tl.where(even_x, tl.maximum(cx - 1, 0), tl.minimum(cx + 1, cw - 1))
            near = (3 * near + _sample(plane, pitch, cy, nx, mask) + tl.where(even_x, 1, 2)) >> 2
        else:
            ny = tl.where(even_y, tl.maximum(cy - 1, 0), tl.minimum(cy + 1, ch - 1))
            near = (3 * near + _sample(plane, pitch, ny, cx, mask) + tl.where(even_y, 1, 2)) >> 2
    return near


@triton.jit(do_not_specialize=["h", "w", "ch", "cw", "y_pitch", "c_pitch"])
def _ycc_to_bgr(y_ptr, cb_ptr, cr_ptr, out_ptr, h, w, ch, cw, y_pitch, c_pitch,
                CR_R_: tl.constexpr, CB_B_: tl.constexpr, CR_G_: tl.constexpr, CB_G_: tl.constexpr,
                HALF: tl.constexpr, HS: tl.constexpr, VS: tl.constexpr, FANCY: tl.constexpr,
                GRAY: tl.constexpr, BLOCK_: tl.constexpr):
    """BLOCK_ output pixels of one image: Y, upsampled Cb and Cr, then jdcolor.c's conversion."""
    p = tl.program_id(0) * BLOCK_ + tl.arange(0, BLOCK_)
    mask = p < h * w
    oy = p // w
    ox = p % w
    y = _sample(y_ptr, y_pitch, oy, ox, mask)
    if GRAY:
        b = y
        g = y
        r = y
    else:
        cb = _chroma(cb_ptr, c_pitch, oy, ox, ch, cw, mask, HS, VS, FANCY) - 128
        cr = _chroma(cr_ptr, c_pitch, oy, ox, ch, cw, mask, HS, VS, FANCY) - 128
        r = y + ((CR_R_ * cr + HALF) >> 16)
        b = y + ((CB_B_ * cb + HALF) >> 16)
        g = y + ((-CB_G_ * cb + HALF - CR_G_ * cr) >> 16)
    out = out_ptr + p.to(tl.int64) * 3
    tl.store(out, tl.minimum(tl.maximum(b, 0), 255).to(tl.uint8), mask=mask)
    tl.store(out + 1, tl.minimum(tl.maximum(g, 0), 255).to(tl.uint8), mask=mask)
    tl.store(out + 2, tl.minimum(tl.maximum(r, 0), 255).to(tl.uint8), mask=mask)


def plane_dims(h: int, w: int, chroma: tuple[int, int] | None) -> list[tuple[int, int]]:
    """(height, width) of each component plane of an h x w JPEG, as libjpeg sizes them: Y, then
    Cb and Cr of (ceil(h / vs), ceil(w / hs)) for chroma factors (hs, vs); Y alone for greyscale."""
    if chroma is None:
        return [(h, w)]
    hs, vs = chroma
    return [(h, w)] + [(-(-h // vs), -(-w // hs))] * 2


def ycc_to_bgr(planes: list[torch.Tensor], chroma: tuple[int, int] | None, out: torch.Tensor) -> None:
    """Write the BGR uint8 image `out` (h, w, 3), contiguous, from a JPEG's component planes of at
    least `plane_dims(h, w, chroma)`, chroma factors (hs, vs) in {1, 2} (None: greyscale, Y alone).
    Planes may be wider than the image (a row pitch), as nvJPEG may write them."""
    h, w, _ = out.shape
    dims = plane_dims(h, w, chroma)
    if len(planes) != len(dims) or any(p.shape[0] < r or p.shape[1] < c for p, (r, c) in zip(planes, dims)):
        raise ValueError(f"planes {[tuple(p.shape) for p in planes]} too small for a {w}x{h} image")
    y_plane, (cb, cr) = planes[0], (planes[1:] if chroma is not None else (planes[0], planes[0]))
    if cb.stride() != cr.stride():
        raise ValueError(f"Cb and Cr planes differ in pitch ({cb.stride(0)}, {cr.stride(0)})")
    hs, vs = chroma or (1, 1)
    ch, cw = dims[-1]
    if out.device.type == "cuda":
        block, options = BLOCK, {}
    else:  # Triton's interpreter (CI): one program, its NumPy vectorised over the whole image
        block, options = triton.next_power_of_2(h * w), {}
    _ycc_to_bgr[(triton.cdiv(h * w, block),)](
        y_plane, cb, cr, out, h, w, ch, cw, y_plane.stride(0), cb.stride(0),
        CR_R_=CR_R, CB_B_=CB_B, CR_G_=CR_G, CB_G_=CB_G, HALF=ONE_HALF, HS=hs, VS=vs, FANCY=cw > 2 or hs == 1,
        GRAY=chroma is None, BLOCK_=block, num_warps=4, **options)
