"""What a plan build is asked for, in plain values: precision flags, the profile, trtexec's command line.

Kept apart from the builders so the decisions are plain functions of plain values, tested on
machines without TensorRT; `BuildError` lives here because calibration and the builders both
raise it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from yolo_triton import spec
from yolo_triton.repository import configs as repository

PRECISIONS = ("fp16", "fp32", "int8")
DEFAULT_WORKSPACE_MIB = 4096


class BuildError(RuntimeError):
    """A plan could not be built; the message says why and what to do."""


def builder_flags(precision: str) -> tuple[str, ...]:
    """Names of the trt.BuilderFlag members to set.

    INT8 also allows FP16: layers TensorRT cannot quantize then run in FP16 instead of FP32.
    FP32 sets nothing (TensorRT 10 allows TF32 by default on Ampere and later).
    """
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}
    if precision not in flags:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return flags[precision]


def profile_shapes(imgsz: int, opt_batch: int, max_batch: int = spec.MAX_BATCH,
                   min_batch: int = 1) -> dict[str, tuple[int, ...]]:
    """The optimisation profile: batch min..max (max = the config's max_batch_size), fixed size.

    The ONNX export leaves height and width dynamic too; the profile pins them to imgsz, which is
    what the config declares and what preprocess produces.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"TensorRT batch range must satisfy 1 <= min <= opt <= max, got "
                         f"{min_batch}/{opt_batch}/{max_batch}")
    if imgsz <= 0 or imgsz % 32:
        raise ValueError(f"imgsz must be a positive multiple of 32, got {imgsz}")
    channels = spec.PIXELS.dims[0]
    return {k: (b, channels, imgsz, imgsz) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}


def shape_arg(name: str, shape: Sequence[int]) -> str:
    """trtexec's (and ONNX Runtime's TensorRT EP's) shape syntax: `images:1x3x640x640`."""
    return f"{name}:" + "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class BuildSettings:
    """Everything a plan build depends on, in plain values."""

    onnx: Path
    plan: Path
    imgsz: int
    precision: str = "fp16"
    opt_batch: int = repository.TRT_OPT_BATCH
    max_batch: int = spec.MAX_BATCH
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Path | None = None
    calib_cache: Path | None = None
    input_name: str = spec.PIXELS.name

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return profile_shapes(self.imgsz, self.opt_batch, self.max_batch)

    @property
    def flags(self) -> tuple[str, ...]:
        return builder_flags(self.precision)


def trtexec_argv(trtexec: str, s: BuildSettings) -> list[str]:
    """trtexec's command line for `s` (TensorRT 10 flags: --memPoolSize replaced --workspace)."""
    shapes = s.shapes
    argv = [
        trtexec,
        f"--onnx={s.onnx}",
        f"--saveEngine={s.plan}",
        f"--minShapes={shape_arg(s.input_name, shapes['min'])}",
        f"--optShapes={shape_arg(s.input_name, shapes['opt'])}",
        f"--maxShapes={shape_arg(s.input_name, shapes['max'])}",
        f"--memPoolSize=workspace:{s.workspace_mib}M",
        "--skipInference",
    ]
    if s.timing_cache is not None:
        argv.append(f"--timingCacheFile={s.timing_cache}")
    argv += [f"--{f.lower()}" for f in s.flags]
    if s.precision == "int8":
        if s.calib_cache is None:
            raise ValueError("trtexec builds INT8 only from an existing calibration cache")
        argv.append(f"--calib={s.calib_cache}")
    return argv
