"""Encoded images (IMAGE_BYTES): format, dimensions and orientation from the header, then decoding.

The header is read before anything is decoded, so a decompression bomb (a small file whose header
claims 20000x20000 pixels) is refused under the same pixel limits as IMAGE without allocating its
pixels. Decoders are lenient where a request must not be: OpenCV fills a truncated JPEG with grey
and only logs a warning, so truncation is detected here from the file's structure (no EOI marker
after the scan, no IEND chunk, a RIFF size past the end) and refused.

EXIF orientation (tag 0x0112 of a JPEG's first EXIF segment, or of a PNG's eXIf chunk) is applied
as Ultralytics applies it: its predictor reads files with cv2.imread, which rotates by it (OpenCV
4.11 does not rotate WebP files). Boxes are in the pixels of the image as displayed (after
rotation); the client's own reader (client.images) does the same, so pixels and bytes agree.
The orientation is applied here, not by the decoder, so that the CPU (OpenCV) and GPU (nvJPEG)
decoders, which differ in what they do with EXIF, give the same image.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from yolo_triton import spec
from yolo_triton.pipeline import png
from yolo_triton.pipeline.validation import InputError

NAME = spec.IMAGE_BYTES.name
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Magic numbers of formats that are images but not decoded here, for a message that says so.
_OTHER_FORMATS = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"),
                  (b"\0\0\0\x0cjP  ", "JPEG 2000"), (b"qoif", "QOI"), (b"\0\0\1\0", "ICO"))
# JPEG start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Sequential Huffman (baseline, extended): what the GPU decodes. Progressive files go to the host:
# nvJPEG's pixels for them were up to 3 grey levels off libjpeg-turbo's (an H100, 2026-12-07).
_NVJPEG_SOF = {0xC0, 0xC1}
_PROGRESSIVE_SOF = {0xC2, 0xC6, 0xCA, 0xCE}  # Huffman or arithmetic, differential or not
# EXIF orientation -> (transpose first, then flip rows, flip columns): all eight as one table.
ORIENTATIONS: dict[int, tuple[bool, bool, bool]] = {
    1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
    5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False),
}


@dataclass(frozen=True)
class Header:
    """What the file says about itself, read without decoding it."""

    format: str  # one of spec.ENCODED_FORMATS
    width: int  # as stored (before the EXIF orientation)
    height: int
    orientation: int = 1  # EXIF orientation, 1..8 (1: as stored)
    # A JPEG the GPU decoder takes (torch_encoded): 8-bit sequential Huffman, greyscale or YCbCr, with chroma
    # `chroma` = (hs, vs), luma samples per chroma sample across and down, each 1 or 2 (None: grey).
    nvjpeg: bool = False
    chroma: tuple[int, int] | None = None


class EncodedImageError(InputError):
    """An encoded image refused: the message names it by its index in the request, as the server
    reports it; `why` alone is for a client that names it by its file."""

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"{NAME}[{index}]: {why}")
        self.index, self.why = index, why

    def __reduce__(self) -> tuple:  # pickled (a worker process's error) as it was built
        return EncodedImageError, (self.index, self.why)


def images_of(array: object) -> list[bytes]:
    """The encoded files of one request's IMAGE_BYTES tensor ([batch, 1] of BYTES), bounds checked."""
    if not isinstance(array, np.ndarray) or array.dtype != object:
        raise InputError(f"{NAME}: expected BYTES elements (one encoded file each), got {type(array).__name__}")
    if array.ndim != 2 or array.shape[1] != 1:
        raise InputError(f"{NAME}: expected shape [batch, 1] (one encoded file per image), got {list(array.shape)}")
    if array.shape[0] < 1:
        raise InputError(f"{NAME}: empty batch")
    if array.shape[0] > spec.MAX_BATCH:
        raise InputError(f"{NAME}: batch of {array.shape[0]} exceeds the limit of {spec.MAX_BATCH}")
    return [bytes(x) for x in array[:, 0]]


def read_headers(files: Sequence[bytes]) -> list[Header]:
    """Every file's header (`read_header`), then the request's decoded pixels together against
    `spec.MAX_REQUEST_PIXELS`: all before any file is decoded."""
    headers = [read_header(f, i) for i, f in enumerate(files)]
    total = sum(h.width * h.height for h in headers)
    if total > spec.MAX_REQUEST_PIXELS:
        raise InputError(f"{NAME}: the request's {len(files)} images decode to {total} pixels together, over the "
                         f"limit of {spec.MAX_REQUEST_PIXELS} per request; send them in several requests")
    return headers


def format_of(data: bytes) -> str:
    """The encoding a file's first bytes name, of spec.ENCODED_FORMATS; "" for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return ""


def read_header(data: bytes, index: int) -> Header:
    """Format and dimensions from the first bytes; InputError naming the image for anything that is
    not a complete JPEG/PNG/WebP within the IMAGE limits."""
    if not data:
        raise EncodedImageError(index, "empty (0 bytes); expected an encoded JPEG, PNG or WebP file")
    if len(data) > spec.MAX_ENCODED_BYTES:
        raise EncodedImageError(
            index, f"{len(data)} bytes exceed the limit of {spec.MAX_ENCODED_BYTES} bytes per encoded image")
    fmt = format_of(data)
    if fmt:
        header = _HEADER_READERS[fmt](data, index)
    else:
        other = next((name for magic, name in _OTHER_FORMATS if data.startswith(magic)), "")
        if not other and data[4:8] == b"ftyp":
            other = "HEIF/AVIF"
        if other:
            raise EncodedImageError(index, f"unsupported format {other}; send JPEG, PNG or WebP")
        raise EncodedImageError(
            index, f"not an image (starts with {data[:8].hex(' ')}); send an encoded JPEG, PNG or WebP file")
    if header.width < 1 or header.height < 1:
        raise EncodedImageError(index, f"{header.format} header gives zero size {header.width}x{header.height}")
    w, h = header.width, header.height
    if max(w, h) > spec.MAX_IMAGE_SIDE or w * h > spec.MAX_IMAGE_PIXELS:
        raise EncodedImageError(index, f"{header.format} of {w}x{h} exceeds the limit ({spec.MAX_IMAGE_SIDE} px "
                                       f"per side, {spec.MAX_IMAGE_PIXELS} px in all); refused before decoding")
    return header


def _truncated(index: int, fmt: str, what: str) -> InputError:
    return EncodedImageError(index, f"truncated {fmt} ({what}); send the whole file")


def _jpeg(data: bytes, index: int) -> Header:
    """Walk the marker segments up to the first scan: SOFn gives the size, APP1 the orientation;
    then count the scans (`spec.MAX_JPEG_SCANS`) and look for the end-of-image marker."""
    pos, size, orientation, frame = 2, None, 1, b""
    jfif, adobe_transform, exif = False, -1, False
    for _segment in range(spec.MAX_JPEG_SEGMENTS):
        if data[pos : pos + 2] == b"\xff\xff":  # fill bytes (FF FF ...): one C-level match, however many
            pos = _FILL.match(data, pos).end() - 1
        if pos + 4 > len(data):
            raise _truncated(index, "JPEG", "ends inside its headers")
        if data[pos] != 0xFF:
            raise EncodedImageError(index, f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack_from(">H", data, pos + 2)[0]
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) < length - 2:
            raise _truncated(index, "JPEG", f"segment FF{marker:02X} at byte {pos} runs past the end")
        if marker in _SOF and size is None:
            if len(body) < 6:
                raise EncodedImageError(index, "corrupt JPEG: short frame header")
            h, w = struct.unpack_from(">HH", body, 1)
            if h == 0:
                raise EncodedImageError(index, "unsupported JPEG: height given by a DNL marker")
            size = (w, h)
            frame = bytes([marker]) + body
        elif marker == 0xE0 and body.startswith(b"JFIF\0"):
            jfif = True
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe_transform = body[11]
        elif marker == 0xE1 and body.startswith(b"Exif\0\0") and not exif:
            orientation, exif = _exif_orientation(body[6:]), True  # the first one, as OpenCV reads it
        elif marker == 0xDA:  # start of scan: the header is over
            break
        elif marker == 0xD9:
            raise EncodedImageError(index, "corrupt JPEG: end of image before any scan")
        pos += 2 + length
    else:
        raise EncodedImageError(index, f"corrupt JPEG: over {spec.MAX_JPEG_SEGMENTS} marker segments before the scan")
    if size is None:
        raise EncodedImageError(index, "corrupt JPEG: no frame header (SOFn) before the scan")
    # Entropy-coded data never holds FF D9 or FF DA (FF is stuffed as FF 00): an EOI after the scan's
    # start is the file's end, and without one the file was cut (embedded thumbnails sit before the
    # scan). In a progressive file each FF DA from here on starts a scan (a table segment between
    # scans holding those two bytes would count as one more, which only a file made to do so has).
    # A sequential scan needs entropy-coded data for every block it covers, so its cost follows its
    # size, and its scans are not counted: that search would cost 0.1 ms a megabyte, every request.
    if data.rfind(b"\xff\xd9", pos) < 0:
        raise _truncated(index, "JPEG", "no end-of-image marker after the scan")
    scans = data.count(b"\xff\xda", pos) if frame[0] in _PROGRESSIVE_SOF else 1
    if scans > spec.MAX_JPEG_SCANS:
        raise EncodedImageError(index, f"unsupported JPEG: {scans} scans, over the limit of {spec.MAX_JPEG_SCANS} "
                                       f"(a decoder passes over the whole image once per scan)")
    gpu, chroma = _gpu_decodable(frame, jfif, adobe_transform)
    return Header("jpeg", size[0], size[1], orientation, gpu, chroma)


_FILL = re.compile(rb"\xff+")  # fill bytes: a marker's FF repeated
_HOST_ONLY = (False, None)


def _gpu_decodable(frame: bytes, jfif: bool, adobe_transform: int) -> tuple[bool, tuple[int, int] | None]:
    """Whether the GPU decoder takes a JPEG frame (its SOF marker, then the segment), and its
    chroma factors (None: greyscale). Left to the host: progressive files, other precisions and codings, RGB and CMYK
    files, and subsamplings other than full, half width, half height or both.
    Colour space as libjpeg-turbo guesses it: YCbCr with a JFIF marker, else what an Adobe marker's
    transform says, else RGB only for component ids 'R', 'G', 'B'."""
    if len(frame) < 7 or frame[0] not in _NVJPEG_SOF or frame[1] != 8:
        return _HOST_ONLY
    channels = frame[6]
    components = frame[7 : 7 + 3 * channels]
    if len(components) < 3 * channels or channels not in (1, 3):
        return _HOST_ONLY
    if channels == 1:
        return True, None
    ids = components[0::3]
    rgb = not jfif and (adobe_transform == 0 or (adobe_transform < 0 and ids == b"RGB"))
    factors = [(c >> 4, c & 15) for c in components[1::3]]
    if rgb or factors[1] != (1, 1) or factors[2] != (1, 1) or not all(f in (1, 2) for f in factors[0]):
        return _HOST_ONLY
    return True, factors[0]


def _exif_orientation(tiff: bytes) -> int:
    """EXIF tag 0x0112 of IFD0 (1 when absent or malformed: the image is shown as stored)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    ifd = struct.unpack_from(order + "I", tiff, 4)[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack_from(order + "H", tiff, ifd)[0]
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            return 1
        tag, kind = struct.unpack_from(order + "HH", tiff, at)
        if tag == 0x0112 and kind == 3:  # SHORT
            value = struct.unpack_from(order + "H", tiff, at + 8)[0]
            return value if value in ORIENTATIONS else 1
    return 1


def _png(data: bytes, index: int) -> Header:
    """IHDR gives the size; the first eXIf chunk, wherever it is, the orientation (OpenCV 4.11's
    imread applies it to PNG files as to JPEG)."""
    if len(data) < 33:
        raise _truncated(index, "PNG", "ends inside its header")
    if data[12:16] != b"IHDR":
        raise EncodedImageError(index, "corrupt PNG: first chunk is not IHDR")
    end = data.rfind(b"IEND", 33)
    if end < 0 or end + 8 > len(data):  # the chunk type, then its CRC: libpng reads both
        raise _truncated(index, "PNG", "no IEND chunk" if end < 0 else "its IEND chunk is cut")
    try:
        w, h = png.check_ihdr(data)
        exif = png.exif(data)
    except png.PngError as e:
        raise EncodedImageError(index, str(e)) from None
    return Header("png", w, h, 1 if exif is None else _exif_orientation(exif))


def _webp(data: bytes, index: int) -> Header:
    riff = struct.unpack_from("<I", data, 4)[0]
    if len(data) < 8 + riff:
        raise _truncated(index, "WebP", f"{len(data)} of the {8 + riff} bytes its RIFF header announces")
    if len(data) < 30:
        raise _truncated(index, "WebP", "ends inside its header")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise EncodedImageError(index, "corrupt WebP: bad VP8 start code")
        w, h = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    elif chunk == b"VP8L":
        if data[20] != 0x2F:
            raise EncodedImageError(index, "corrupt WebP: bad VP8L signature")
        bits = struct.unpack_from("<I", data, 21)[0]
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        if data[20] & 0x02:
            raise EncodedImageError(index, "unsupported format: animated WebP; send one still frame")
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
    else:
        raise EncodedImageError(index, f"corrupt WebP: unknown chunk {chunk!r}")
    return Header("webp", w, h)


_HEADER_READERS = {"jpeg": _jpeg, "png": _png, "webp": _webp}


def orientation_of(data: bytes) -> int:
    """The EXIF orientation of a file a client read (1 for anything without one, or not a JPEG or PNG)."""
    try:
        return read_header(data, 0).orientation if format_of(data) in ("jpeg", "png") else 1
    except InputError:
        return 1


def oriented_shape(header: Header) -> tuple[int, int]:
    """(height, width) of the image once its EXIF orientation is applied."""
    transpose = ORIENTATIONS[header.orientation][0]
    return (header.width, header.height) if transpose else (header.height, header.width)


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """An HWC image as EXIF orientation `orientation` says it is displayed (a contiguous copy when
    it changes anything)."""
    transpose, flip_rows, flip_cols = ORIENTATIONS[orientation]
    if transpose:
        image = image.swapaxes(0, 1)
    if flip_rows:
        image = image[::-1]
    if flip_cols:
        image = image[:, ::-1]
    return np.ascontiguousarray(image) if orientation != 1 else image


def decode(data: bytes, header: Header, index: int) -> np.ndarray:
    """One checked file -> BGR uint8 (H, W, 3), oriented: JPEG and WebP by OpenCV, with its own EXIF
    handling switched off (IMREAD_IGNORE_ORIENTATION), PNG by Pillow (`png.decode`), which has
    none; `orient` applies the header's orientation, the same way on every decoder."""
    if header.format == "png":
        try:
            image = png.decode(data)
        except png.PngError as e:
            raise EncodedImageError(index, str(e)) from None
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise EncodedImageError(index, f"corrupt {header.format}: the decoder could not read it")
    check_decoded(image.shape[:2], header, index)
    return orient(image, header.orientation)


def check_decoded(hw: Sequence[int], header: Header, index: int) -> None:
    """The decoder must give what the header (which the limits were checked on) announced."""
    if (int(hw[0]), int(hw[1])) != (header.height, header.width):
        raise EncodedImageError(index, f"corrupt {header.format}: header says {header.width}x{header.height}, "
                                       f"data decodes to {hw[1]}x{hw[0]}")


def decode_all(files: Sequence[bytes]) -> list[np.ndarray]:
    """Every file of a request, headers first (all are checked before any is decoded)."""
    return [decode(f, h, i) for i, (f, h) in enumerate(zip(files, read_headers(files)))]


@dataclass(frozen=True)
class EncodedFile:
    """One checked file of a request, decoded only when its pixels are needed (`pixels`).

    The CPU models take a request's files as these, so that an execute() decodes one image at a
    time, letterboxes it and lets it go: what it holds decoded is one image, not every image of
    every request batched into it (64 files of 40 M pixels would be 7.7 GB)."""

    data: bytes
    header: Header
    index: int  # in its request, for the message that refuses it

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(1, height, width, 3) as decoded and oriented: what `pixels()` will return."""
        return (1, *oriented_shape(self.header), 3)

    def pixels(self) -> np.ndarray:
        """(1, H, W, 3) BGR uint8; EncodedImageError when the data does not decode as its header says."""
        return decode(self.data, self.header, self.index)[None]


def encoded_files(files: Sequence[bytes]) -> list[EncodedFile]:
    """A request's files, every header checked (`read_headers`), none decoded yet."""
    return [EncodedFile(f, h, i) for i, (f, h) in enumerate(zip(files, read_headers(files)))]
