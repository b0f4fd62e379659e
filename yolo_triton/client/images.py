"""Reading what users point the clients at: image files, folders and videos, as BGR uint8.

Grayscale, RGBA and 16-bit files are converted here rather than rejected by the server; files
that are not images get an `InputError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from yolo_triton import spec
from yolo_triton.pipeline import encoded
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
    rotates it. JPEG, PNG and WebP files (up to the server's size for one) go through the server's
    own IMAGE_BYTES checks and decoder (`pipeline.encoded`): the same pixels either way, and a
    decompression bomb among a user's files is refused from its header here too. Other formats
    (BMP, TIFF) and larger files are OpenCV's."""
    if not data:
        raise InputError(f"{name}: empty file (0 bytes): copy it again, or leave it out")
    if encoded.format_of(data) and len(data) <= spec.MAX_ENCODED_BYTES:
        try:
            return encoded.decode(data, encoded.read_header(data, 0), 0)
        except encoded.EncodedImageError as e:
            raise InputError(f"{name}: {e.why}") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{name}: not a decodable image (corrupt, truncated or not an image file): "
                         "re-save it as JPEG or PNG, or leave it out")
    try:
        return orient(to_bgr(image), orientation_of(data))
    except InputError as e:
        raise InputError(f"{name}: {e}: save it as 8- or 16-bit gray, BGR or BGRA") from None


def read(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}): check that it is a file you may read") from None
    return decode(data, str(path))


def expand_each(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """(files, problems): files as given, folders to their image and video files, sorted; a
    missing path or a folder without such files is a problem (a message naming it), not an end."""
    out: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                problems.append(f"{p}: folder has no image or video files (looked for "
                                f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})")
            out += found
        elif p.exists():
            out.append(p)
        else:
            problems.append(f"{p}: no such file or folder (check the path)")
    return out, problems


def expand(inputs: list[str]) -> list[Path]:
    """expand_each, ending at the first problem (InputError)."""
    out, problems = expand_each(inputs)
    if problems:
        raise InputError(problems[0])
    return out


def video_fps(path: Path, default: float = 25.0) -> float:
    """The frame rate a video file declares (`default` when it declares none)."""
    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return fps if fps and fps > 0 else default


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def frames(path: Path) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """(name, image, None) for an image file, or (name, frame, index) per frame of a video file."""
    if not is_video(path):
        yield str(path), read(path), None
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: cannot open video (corrupt, or a codec OpenCV lacks: re-encode it as H.264 MP4)")
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"{path}#{index}", frame, index
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise InputError(f"{path}: video has no readable frames (re-encode it as H.264 MP4)")
