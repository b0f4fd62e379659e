"""What the measurements send: real photos, and perf_analyzer's input data made from them.

Real sizes matter: letterbox, copies and the gRPC payload all scale with the photo, which random
fixed-size tensors would hide. Every tool takes its photos from here, so a perf sweep, a Locust
run and the comparison measure the same images.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.client import images
from yolo_triton.paths import SAMPLES
from yolo_triton.perf.errors import PerfToolError
from yolo_triton.pipeline.validation import InputError

# The value each optional input has when a request leaves it out (the server's defaults).
DEFAULTS = {spec.CONF_THRESHOLD.name: spec.DEFAULT_CONF, spec.IOU_THRESHOLD.name: spec.DEFAULT_IOU,
            spec.MAX_DETECTIONS.name: spec.DEFAULT_MAX_DET, spec.MULTI_LABEL.name: False}


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # BGR uint8 (H, W, 3), what the clients send as IMAGE
    data: bytes = b""  # the file's own bytes, what they send as IMAGE_BYTES

    @property
    def size(self) -> str:
        h, w = self.image.shape[:2]
        return f"{w}x{h}"


def _ultralytics_assets() -> Path | None:
    found = importlib.util.find_spec("ultralytics")  # locate without importing torch
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / "assets"


def sample_images(sources: Sequence[str] = ()) -> list[Sample]:
    """Real photos to send: the given files/folders, else the shipped samples plus Ultralytics'
    bus.jpg and zidane.jpg (one entry per file name)."""
    paths: list[Path] = []
    if sources:
        paths = images.expand(list(sources))
    else:
        if SAMPLES.is_dir():
            paths += images.expand([str(SAMPLES)])
        assets = _ultralytics_assets()
        if assets is not None:
            paths += [assets / n for n in ("bus.jpg", "zidane.jpg") if (assets / n).exists()]
    seen: set[str] = set()
    out: list[Sample] = []
    for p in paths:
        if p.name in seen or p.suffix.lower() not in images.IMAGE_SUFFIXES:
            continue
        seen.add(p.name)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InputError(f"{p}: cannot read ({e.strerror})") from None
        out.append(Sample(p.name, images.decode(data, str(p)), data))
    if not out:
        raise PerfToolError("no sample images: pass --images FILES_OR_FOLDERS (assets/samples is empty or missing)")
    return out


def spread(samples: Sequence[Sample], n: int) -> list[Sample]:
    """n samples spanning the size range (smallest, largest, in between): a quick run still sends
    several real photo shapes."""
    ordered = sorted(samples, key=lambda s: (s.image.shape[0] * s.image.shape[1], s.name))
    if n >= len(ordered):
        return list(ordered)
    if n <= 1:
        return [ordered[-1]]
    idx = sorted({round(i * (len(ordered) - 1) / (n - 1)) for i in range(n)})
    return [ordered[i] for i in idx]


def photos(sources: Sequence[str], quick: bool = False) -> list[Sample]:
    """The photos a tool sends: `sample_images`, three of them in a quick run that named none.
    An unreadable file is a PerfToolError like a missing folder."""
    try:
        samples = sample_images(sources)
    except InputError as e:
        raise PerfToolError(str(e)) from None
    return spread(samples, 3) if quick and not sources else samples


def write_input_data(pictures: Sequence[np.ndarray], path: Path, with_defaults: bool = False) -> Path:
    """perf_analyzer --input-data JSON: one entry per image with its own shape.

    Without `with_defaults` only IMAGE is given, so requests use the server's defaults as a client
    that sends no options does. perf_analyzer 2.51 refuses shared memory for a model with optional
    inputs unless each has data: `with_defaults` sends every option at its default, which asks
    the server for exactly what leaving them out does, and an empty IMAGE_BYTES, which the server
    takes for no files (backend.images.image_input)."""
    data = []
    for image in pictures:
        entry: dict = {spec.IMAGE.name: {"b64": base64.b64encode(np.ascontiguousarray(image).tobytes()).decode("ascii"),
                                         "shape": list(image.shape)}}
        if with_defaults:
            entry[spec.IMAGE_BYTES.name] = [""]
        data.append(_with_options(entry, with_defaults))
    return _write(data, path)


def _with_options(entry: dict, with_defaults: bool) -> dict:
    """`entry` with every option at its server default, when asked."""
    for t in spec.OPTIONS if with_defaults else ():
        if t.name not in DEFAULTS:
            raise KeyError(f"no default for optional input {t.name}: shared memory needs data for it")
        entry[t.name] = [DEFAULTS[t.name]]
    return entry


def _write(data: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


def write_encoded_input_data(files: Sequence[bytes], path: Path, with_defaults: bool = False) -> Path:
    """perf_analyzer --input-data JSON for IMAGE_BYTES: one entry per encoded file, sent as it is.

    perf_analyzer sends "b64" content as the tensor's raw bytes, and a BYTES tensor's raw form is
    each element prefixed by its 4-byte little-endian length, so that is what is encoded."""
    data = []
    for f in files:
        raw = len(f).to_bytes(4, "little") + bytes(f)
        entry = {spec.IMAGE_BYTES.name: {"b64": base64.b64encode(raw).decode("ascii")}}
        data.append(_with_options(entry, with_defaults))
    return _write(data, path)
