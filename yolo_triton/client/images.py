"""Reading what users point the clients at: image files, folders and videos, as BGR uint8.

Grayscale, RGBA and 16-bit files are converted here rather than rejected by the server; files
that are not images get an `InputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from yolo_triton.pipeline.encoded import orient, orientation_of
from yolo_triton.pipeline.validation import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Any decoded image -> 3-channel uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise InputError(f"unsupported image layout {list(image.shape)}")


def decode(data: bytes, name: str = "image") -> np.ndarray:
    """A file's bytes -> BGR, rotated by its EXIF orientation as cv2.imread (Ultralytics' reader)
    and the server's IMAGE_BYTES decoder rotate it (IMREAD_UNCHANGED alone would not)."""
    if not data:
        raise InputError(f"{name}: empty file (0 bytes)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{name}: not a decodable image (corrupt, truncated or not an image file)")
    return orient(to_bgr(image), orientation_of(data))


def read(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    return decode(data, str(path))


def expand(inputs: list[str]) -> list[Path]:
    """Files as given; folders to their image and video files, sorted."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return out


def frames(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, image) for an image file, or one per frame of a video file."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        yield str(path), read(path)
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: cannot open video")
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"{path}#{index}", frame
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise InputError(f"{path}: video has no readable frames")
