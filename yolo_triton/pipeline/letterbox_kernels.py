"""The letterbox in one Triton kernel: BGR uint8 NHWC images in, RGB [0, 1] NCHW network input out.

Written with PyTorch ops, the letterbox makes a float32 copy of the images, resizes it, rounds,
flips and casts it into the canvas, and divides the canvas: eight kernels and, by count, about
1.6 GB of memory traffic for 33 frames of 1080x810 at 640 (a saturated batch), against 0.17 GB for
reading the frames once and writing the canvas once, which is what this kernel does.

Each output pixel is computed as `torch.nn.functional.interpolate(..., mode="bilinear",
align_corners=False)` computes it (source index `scale * (dst + 0.5) - 0.5` clamped at 0, its
integer part and fraction, the two-by-two weighted sum in float32), rounded half to even as
`torch.round` does, then divided by 255 and stored in the canvas's dtype. Padding is 114. With
`enable_fp_fusion=False` the GPU rounds every step as IEEE float32 does, so the pixels equal
OpenCV's letterbox (`geometry.letterbox` + `geometry.to_pixels`) up to one grey level, its
fixed-point weights rounding otherwise (tests/test_gpu.py).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from yolo_triton.pipeline import geometry

BLOCK = 1024  # output pixels per program on the GPU


@triton.jit
def _letterbox_pixels(
    src, out, h, w, new_h, new_w, pad_y, pad_x, scale_h, scale_w, pad_value, p, in_canvas, S: tl.constexpr,
):
    """Canvas pixels `p` of one image (`src` its first byte, `out` its first output value)."""
    oy = p // S
    ox = p % S
    ry = oy - pad_y
    rx = ox - pad_x
    inside = in_canvas & (ry >= 0) & (ry < new_h) & (rx >= 0) & (rx < new_w)
    sy = tl.maximum(scale_h * (ry.to(tl.float32) + 0.5) - 0.5, 0.0)
    sx = tl.maximum(scale_w * (rx.to(tl.float32) + 0.5) - 0.5, 0.0)
    y0 = sy.to(tl.int32)  # sy >= 0: truncation is floor
    x0 = sx.to(tl.int32)
    y1 = y0 + tl.where(y0 < h - 1, 1, 0)
    x1 = x0 + tl.where(x0 < w - 1, 1, 0)
    ly = sy - y0.to(tl.float32)
    lx = sx - x0.to(tl.float32)
    hy = 1.0 - ly
    hx = 1.0 - lx
    for c in tl.static_range(3):
        v00 = tl.load(src + (y0 * w + x0) * 3 + c, mask=inside, other=0).to(tl.float32)
        v01 = tl.load(src + (y0 * w + x1) * 3 + c, mask=inside, other=0).to(tl.float32)
        v10 = tl.load(src + (y1 * w + x0) * 3 + c, mask=inside, other=0).to(tl.float32)
        v11 = tl.load(src + (y1 * w + x1) * 3 + c, mask=inside, other=0).to(tl.float32)
        v = hy * (hx * v00 + lx * v01) + ly * (hx * v10 + lx * v11)
        # round half to even, as torch.round (no libdevice: the interpreter has none)
        f = tl.floor(v)
        d = v - f
        odd = (f.to(tl.int32) & 1) == 1
        v = tl.where((d > 0.5) | ((d == 0.5) & odd), f + 1.0, f)
        v = tl.where(inside, v, pad_value)
        value = tl.div_rn(v, 255.0)
        tl.store(out + (2 - c) * S * S + p, value.to(out.dtype.element_ty), mask=in_canvas)  # BGR -> RGB


# Sizes and offsets change with every frame size: one compiled kernel for all of them (Triton would
# otherwise compile a variant per pattern of "== 1" and "multiple of 16" among them, a second each).
@triton.jit(do_not_specialize=["h", "w", "new_h", "new_w", "pad_y", "pad_x"])
def _letterbox(
    src_ptr, out_ptr, h, w, new_h, new_w, pad_y, pad_x, scale_h, scale_w, pad_value,
    S: tl.constexpr, BLOCK_: tl.constexpr,
):
    img = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_ + tl.arange(0, BLOCK_)
    _letterbox_pixels(src_ptr + img * h * w * 3, out_ptr + img * 3 * S * S, h, w, new_h, new_w, pad_y, pad_x,
                      scale_h, scale_w, pad_value, p, p < S * S, S)


@triton.jit
def _letterbox_table(staging_ptr, params_ptr, scales_ptr, out_ptr, pad_value,
                     S: tl.constexpr, BLOCK_: tl.constexpr, WIDTH: tl.constexpr):
    """Each image of a batch at its own offset in `staging_ptr`, with its own size and plan, read
    from its row of the parameter table (`table_rows`); a row of zeros is a padding image: nothing
    is read or written for it."""
    img = tl.program_id(0)
    row = params_ptr + img * WIDTH
    offset = tl.load(row).to(tl.int64)
    h = tl.load(row + 1)
    w = tl.load(row + 2)
    new_h = tl.load(row + 3)
    new_w = tl.load(row + 4)
    pad_y = tl.load(row + 5)
    pad_x = tl.load(row + 6)
    scale_h = tl.load(scales_ptr + img * WIDTH + 7)
    scale_w = tl.load(scales_ptr + img * WIDTH + 8)
    p = tl.program_id(1) * BLOCK_ + tl.arange(0, BLOCK_)
    _letterbox_pixels(staging_ptr + offset, out_ptr + img.to(tl.int64) * 3 * S * S, h, w, new_h, new_w, pad_y,
                      pad_x, scale_h, scale_w, pad_value, p, (p < S * S) & (new_h > 0), S)


WIDTH = 10  # int32 words per row of the parameter table (the last is unused: rows stay 8-byte aligned)


def scales(h: int, w: int, lb: geometry.Letterbox) -> tuple[float, float]:
    """torch's bilinear scales: float32(input size) / output size, in float32."""
    return float(np.float32(h) / np.float32(lb.new_h)), float(np.float32(w) / np.float32(lb.new_w))


def table_rows(rows: np.ndarray, offset: int, h: int, w: int, lb: geometry.Letterbox) -> None:
    """Write the rows of `letterbox_table`'s parameters (n, WIDTH) int32 for n frames of one size
    lying one after another from byte `offset` of the staging buffer: each frame's offset, its
    size, the plan, and the two float32 scales by their bits. One row is computed, then repeated."""
    rows[:, :7] = (offset, h, w, lb.new_h, lb.new_w, lb.pad_y, lb.pad_x)
    rows[:, 7:9].view(np.float32)[:] = scales(h, w, lb)
    rows[:, 9] = 0
    rows[:, 0] += np.arange(len(rows), dtype=np.int32) * np.int32(h * w * 3)


def _launch_options(device: torch.device, size: int) -> tuple[int, dict]:
    """BLOCK and compile options: IEEE float32 arithmetic on the GPU; in Triton's interpreter (CI),
    one program per image, its NumPy vectorised over the whole canvas."""
    if device.type == "cuda":
        return BLOCK, {"enable_fp_fusion": False}
    return triton.next_power_of_2(size * size), {}


def letterbox_table(staging: torch.Tensor, params: torch.Tensor, out: torch.Tensor) -> None:
    """Letterbox len(params) images, each `staging[row[0]:]` as an (h, w, 3) uint8 frame with the
    plan in its row of `params` (n, WIDTH) int32 (`table_rows`), into `out` (n, 3, S, S). One launch
    whatever the sizes, and every argument a buffer: what a CUDA graph can replay."""
    n, size = params.shape[0], out.shape[-1]
    block, options = _launch_options(out.device, size)
    grid = (n, triton.cdiv(size * size, block))
    _letterbox_table[grid](staging, params, params.view(torch.float32), out, float(geometry.PAD_VALUE),
                           S=size, BLOCK_=block, WIDTH=WIDTH, num_warps=4, **options)


def letterbox_into(images: torch.Tensor, out: torch.Tensor) -> geometry.Letterbox:
    """Letterbox same-size BGR uint8 NHWC `images` into `out` (n, 3, S, S) of a float dtype on the
    same device; returns the plan (`geometry.plan`). One launch, no temporaries."""
    n, h, w, _ = images.shape
    size = out.shape[-1]
    lb = geometry.plan(h, w, size)
    if n == 0:
        return lb
    scale_h, scale_w = scales(h, w, lb)
    block, options = _launch_options(images.device, size)
    grid = (n, triton.cdiv(size * size, block))
    _letterbox[grid](images.contiguous(), out, h, w, lb.new_h, lb.new_w, lb.pad_y, lb.pad_x, scale_h, scale_w,
                     float(geometry.PAD_VALUE), S=size, BLOCK_=block, num_warps=4, **options)
    return lb
