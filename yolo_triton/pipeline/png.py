"""PNG files sent as IMAGE_BYTES: their chunks, their IHDR, and their pixels by Pillow.

Not by OpenCV: its libpng inflates every compressed chunk in full, so a small file makes it work
for a long time (1 MB of compressed data after the image's own: 1.1 s; 400 KB of zTXt chunks:
0.7 s). Pillow stops at the end of the image and caps text and ICC chunks (1 MB each, 64 MB in
all). The pixels are what OpenCV's IMREAD_COLOR gives (tests/test_encoded.py checks every PNG
layout), and where Pillow is more lenient than libpng the same files are refused here: an IHDR
PNG does not define, and image data that ends before the last row. `pipeline.encoded` checks the
file's structure first (signature, IHDR, IEND) and names the file in the refusal.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import cv2
import numpy as np
from PIL import Image

from yolo_triton import spec

# The bit depths each colour type allows (grey, RGB, palette, grey + alpha, RGBA), its samples
# per pixel, and Adam7's passes as (first column, first row, column step, row step).
DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20


class PngError(ValueError):
    """Why a PNG is refused; `pipeline.encoded` names the file."""


def chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, where its data starts, its length) of each chunk up to IEND, at most spec.MAX_PNG_CHUNKS."""
    pos = 8
    for _chunk in range(spec.MAX_PNG_CHUNKS):
        if pos + 8 > len(data):
            return
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IEND":
            return
        yield kind, pos + 8, length
        pos += 12 + length
    raise PngError(f"corrupt png: over {spec.MAX_PNG_CHUNKS} chunks")


def check_ihdr(data: bytes) -> tuple[int, int]:
    """(width, height) from IHDR, whose depth, colour type and methods must be ones PNG defines
    (libpng refuses the rest; Pillow would decode some)."""
    w, h, depth, colour, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth not in DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise PngError(f"corrupt PNG: IHDR's bit depth {depth}, colour type {colour}, compression method "
                       f"{compression}, filter method {filtering} or interlace method {interlace} "
                       f"is not one PNG defines")
    return w, h


def exif(data: bytes) -> bytes | None:
    """The first eXIf chunk's TIFF data, wherever it is (OpenCV 4.11's imread reads it there)."""
    return next((data[start : start + length] for kind, start, length in chunks(data) if kind == b"eXIf"), None)


def image_bytes(data: bytes) -> int:
    """What the image data must inflate to, filter bytes included, from IHDR (Adam7's passes too)."""
    w, h, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    bits = depth * CHANNELS[colour]
    total = 0
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        cols, rows = -(-(w - x0) // dx), -(-(h - y0) // dy)
        if cols > 0 and rows > 0:
            total += rows * (1 + -(-cols * bits // 8))
    return total


def data_short(data: bytes) -> bool:
    """Whether the image data inflates to fewer bytes than the image needs: inflated and thrown
    away, up to the image's size and no further, so data past the image costs nothing."""
    need = image_bytes(data)
    inflate, got = zlib.decompressobj(), 0
    try:
        for kind, start, length in chunks(data):
            rest = data[start : start + length] if kind == b"IDAT" else b""
            while rest and got < need and not inflate.eof:
                got += len(inflate.decompress(rest, min(_INFLATE_STEP, need - got)))
                rest = inflate.unconsumed_tail
            if got >= need or inflate.eof:
                break
    except zlib.error:
        return True
    return got < need


def _last_rows_blank(image: Image.Image) -> bool:
    """Whether one of the last two rows is all zeros, as Pillow leaves the rows a short zlib stream
    never reached (the last two: an interlaced image's last pass fills every other row)."""
    w, h = image.size
    rows = np.asarray(image.crop((0, max(h - 2, 0), w, h))).reshape(min(h, 2), -1)
    return not rows.any(axis=1).all()


def decode(data: bytes) -> np.ndarray:
    """BGR uint8 (H, W, 3), as OpenCV's IMREAD_COLOR gives it: 16-bit samples cut to their high
    byte, palettes expanded, 1/2/4-bit grey scaled to 0-255, alpha dropped, grey repeated.
    Blank last rows send the file to `data_short`, which tells a black bottom edge from data that
    ends early (OpenCV refuses those files; Pillow would leave the rows black)."""
    try:
        opened = Image.open(io.BytesIO(data), formats=["PNG"])
        opened.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # Pillow's ways of saying corrupt or too big
        raise PngError(f"corrupt or oversized png: {e}; re-save the file, or send it as JPEG") from None
    with opened:
        if _last_rows_blank(opened) and data_short(data):
            raise PngError("corrupt png: its image data ends before its last row")
        image = opened
        if opened.mode == "P":  # the palette's colours (by RGBA where tRNS is there: Pillow asks that)
            image = opened.convert("RGBA" if "transparency" in opened.info else "RGB")
        pixels = np.asarray(image)
        del image  # Pillow's copy goes before the conversion below makes another
    if pixels.dtype == bool:  # 1-bit grey
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype != np.uint8:  # 16-bit grey (Pillow's I;16 or I): libpng's strip_16 keeps the high byte
        pixels = (pixels.astype(np.uint32) >> 8).astype(np.uint8)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(pixels[..., 0]), cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(pixels[..., :3]), cv2.COLOR_RGB2BGR)
