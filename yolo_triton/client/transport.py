"""How a client hands its images to the server: encoded file bytes, pixels, or shared memory.

Across a network the bytes on the wire are what a request costs: a 1080p frame is 2.6 MB of
pixels and 100-300 KB as JPEG, and gRPC refuses messages over 4 MB by default. On the server's own
host moving pixels is a memory copy, and decoding on the server would only add work, so pixels
go in the message (or, forced with "shm", through a shared-memory region). `choose` decides:

- "auto": a server on this host (loopback, or an address of this machine) gets pixels; a remote
  one gets the file's own bytes when the file already is JPEG, PNG or WebP (no re-encoding,
  detected from its first bytes, not its name), pixels otherwise.
- "encoded", "pixels", "shm": forced. Frames of a video have no file of their own: they are
  pixels unless "encoded" is forced, and then encoded as JPEG here (`encode_frame`).
"""

from __future__ import annotations

import functools
import ipaddress
import socket

import cv2
import numpy as np

from yolo_triton.pipeline.validation import InputError

TRANSPORTS = ("auto", "encoded", "pixels", "shm")
FRAME_JPEG_QUALITY = 95  # a video frame the user asked to send encoded
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def is_encoded(data: bytes) -> bool:
    """Whether a file's bytes are a format the server decodes (JPEG, PNG, WebP)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def host_of(url: str) -> str:
    """The host part of HOST:PORT, [IPv6]:PORT or a bare host."""
    if url.startswith("["):
        return url[1 : url.index("]")]
    return url.rsplit(":", 1)[0] if url.count(":") == 1 else url


@functools.cache
def is_local(url: str) -> bool:
    """Whether the server at `url` runs on this machine: a loopback address, or one that resolves to
    an address of this host. A name that does not resolve counts as remote."""
    host = host_of(url)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        own = set()
    return any(ipaddress.ip_address(a.split("%")[0]).is_loopback or a in own for a in addresses)


def choose(transport: str, url: str, data: bytes | None) -> str:
    """"encoded", "pixels" or "shm" for one image; `data` is its file's bytes (None: a video frame)."""
    if transport not in TRANSPORTS:
        raise InputError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
    if transport != "auto":
        return transport
    if data is not None and is_encoded(data) and not is_local(url):
        return "encoded"
    return "pixels"


def encode_frame(image: np.ndarray) -> bytes:
    """A decoded frame as JPEG, for a forced "encoded" transport (lossy: detections may differ a little)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY])
    if not ok:
        raise InputError(f"cannot encode a frame of {image.shape[1]}x{image.shape[0]} as JPEG")
    return buf.tobytes()
