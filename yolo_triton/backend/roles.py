"""What a python model of this repository does, by its config's `role` and `device`.

Each role is a thin adapter between Triton's requests (`Requests`: gathered, checked, refused one
by one, answered in order) and the pipeline's stage objects: the staged ensemble's three models
call one stage each, the fused pipeline all of them. The CPU roles are here; the GPU ones, which
import torch, in gpu_roles.py.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from yolo_triton import spec
from yolo_triton.backend.args import ModelArgs
from yolo_triton.backend.images import count, cut, first_error, flatten, host_pieces, regroup
from yolo_triton.backend.metrics import Stopwatch
from yolo_triton.backend.requests import Requests
from yolo_triton.backend.tensors import NumpyIO, TensorIO
from yolo_triton.pipeline import cpu
from yolo_triton.pipeline.protocol import Outputs
from yolo_triton.pipeline.validation import InputError


class Role(Protocol):
    io: TensorIO
    stages: tuple[str, ...]

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        """Answer every live request of `batch` (batch.answer); returns how many images it served."""
        ...


def split(array: Any, sizes: list[int]) -> list[Any]:  # noqa: ANN401 - an array or a tensor
    """One batched output cut back into each request's images (views, no copies)."""
    out, start = [], 0
    for n in sizes:
        out.append(array[start : start + n])
        start += n
    return out


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class Preprocess:
    """Staged step 1: BGR images of any size (or encoded files, decoded here) -> letterboxed network
    input and LETTERBOX rows."""

    stages = ("preprocess",)
    io = NumpyIO()

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        self.letterbox = cpu.Letterbox(margs.imgsz)

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        with watch("preprocess"):  # decoding included: it is this step's work
            pieces = batch.each(lambda r: host_pieces(batch.pb, r))
            if not pieces:
                return 0
            flat, counts = flatten(pieces)
            pixels, rows = self.letterbox(flat)
        sizes = [count(p) for p in pieces]
        results: list[tuple[np.ndarray, np.ndarray] | InputError] = []
        for px, mine in zip(split(pixels, sizes), split(rows, counts)):
            error = first_error(mine)  # a file that did not decode refuses its request
            results.append(error if error is not None else (px, _concat(list(mine))))
        batch.answer(results, spec.PREPROCESS.outputs)
        return sum(sizes)


class OrtNetwork:
    """Staged step 2 on the CPU: the ONNX detector in ONNX Runtime, one run for every request of the
    execute() (the bundled tritonserver has no onnxruntime backend; this is the CPU default)."""

    stages = ("network",)
    io = NumpyIO()

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        self.network = cpu.OrtNetwork(margs.existing_artefact(), margs.imgsz)

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        pixels = batch.each(lambda r: batch.input(r, spec.PIXELS.name))
        if pixels:
            with watch("network"):
                raw = self.network(_concat(pixels))
            batch.answer([(r,) for r in split(raw, [p.shape[0] for p in pixels])], (spec.RAW,))
        return sum(p.shape[0] for p in pixels)


def postprocess_inputs(batch: Requests) -> Callable[[Any], tuple[Any, Any, list, list[bool]]]:
    def read(request: Any) -> tuple[Any, Any, list, list[bool]]:  # noqa: ANN401
        raw = batch.input(request, spec.RAW.name)
        limits, multi = batch.options(request, raw.shape[0])
        return raw, batch.input(request, spec.LETTERBOX.name), limits, multi

    return read


class Postprocess:
    """Staged step 3: raw detector output -> boxes in original-image pixels (decode, NMS, map back).
    Thresholds are optional per-request inputs (Ultralytics' predict defaults otherwise)."""

    stages = ("postprocess",)
    io = NumpyIO()

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        self.decode = cpu.Decode()

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        items = batch.each(postprocess_inputs(batch))
        results: list[Outputs | InputError] = []
        with watch("postprocess"):
            for raw, lb, limits, multi in items:
                results += self.decode(raw, [lb], [limits], [multi])
        batch.answer(results, spec.ENSEMBLE_OUTPUTS)
        return sum(raw.shape[0] for raw, *_ in items)


def pieces_and_options(batch: Requests) -> Callable[[Any], tuple[list, list, list]]:
    """A request's images (host_pieces) with its options cut as its pieces are (images.cut)."""
    def read(request: Any) -> tuple[list, list, list]:  # noqa: ANN401
        pieces = host_pieces(batch.pb, request)
        limits, multi = batch.options(request, count(pieces))
        return pieces, cut(limits, pieces), cut(multi, pieces)

    return read


class CpuPipeline:
    """The fused CPU model: every stage in one execute(), the ensemble's interface in and out."""

    stages = spec.STAGES
    io = NumpyIO()

    def __init__(self, margs: ModelArgs, pb_utils: ModuleType) -> None:
        self.pipeline = cpu.CpuPipeline(margs.existing_artefact(), margs.imgsz)

    def execute(self, batch: Requests, watch: Stopwatch) -> int:
        with watch("preprocess"):  # decoding is preprocessing; the pipeline adds its letterbox
            items = batch.each(pieces_and_options(batch))
        if not items:
            return 0
        pieces, counts = flatten([p for p, _, _ in items])
        limits, _ = flatten([lim for _, lim, _ in items])
        multi, _ = flatten([ml for _, _, ml in items])
        batch.answer(regroup(self.pipeline(pieces, limits, multi, watch), counts), spec.ENSEMBLE_OUTPUTS)
        return sum(count(p) for p, _, _ in items)


CPU_ROLES: dict[str, type] = {
    "preprocess": Preprocess, "network": OrtNetwork, "postprocess": Postprocess, "pipeline": CpuPipeline,
}


def make(margs: ModelArgs, pb_utils: ModuleType) -> Role:
    """The role this model's config names (a GPU role imports torch, a CPU one never does)."""
    if margs.device == "gpu":
        from yolo_triton.backend.gpu_roles import GPU_ROLES

        roles = GPU_ROLES
    else:
        roles = CPU_ROLES
    if margs.role not in roles:
        raise pb_utils.TritonModelException(f"{margs.name}: unknown role {margs.role!r} on {margs.device}")
    return roles[margs.role](margs, pb_utils)
