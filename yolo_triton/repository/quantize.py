"""INT8 detector for the CPU: ONNX Runtime static quantisation (QDQ) of the exported FP32 ONNX.

Why ONNX Runtime's quantiser and not OpenVINO with NNCF: on the 2-core AVX2 development machine
both ran the INT8 network in about the same time (docs/benchmarks.md, "INT8 on the CPU"), and
ONNX Runtime is already the CPU runtime, so INT8 needs no new dependency and runs in the same
stage object (`pipeline.cpu.OrtNetwork`) as FP32.

How:
- QDQ format (QuantizeLinear/DequantizeLinear pairs around FP32 ops; ONNX Runtime fuses them into
  integer kernels), u8 activations, s8 weights per output channel (per-tensor scales cost box
  accuracy on the depthwise-free YOLOv8 convs for no measured speed).
- The detect head stays FP32: every node in the scope of the last Sigmoid (Ultralytics' own
  OpenVINO INT8 export ignores the same scope). Its final convs produce box distances and class
  logits whose quantisation error moves boxes by whole pixels; the DFL softmax, the anchor
  arithmetic and the concat are cheap in FP32.
- Calibration: MinMax ranges over images letterboxed exactly as the served preprocess does.
  Default images: the demo data set's train split for a checkpoint with its classes (generated
  from its seed when `datasets/shapes` is absent), the shipped samples for any other checkpoint
  (`--calib-images DIR` chooses others).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yolo_triton.paths import ROOT, RUNS, SAMPLES
from yolo_triton.repository.facts import ModelFacts

CALIB_COUNT = 64  # images; MinMax ranges settle within this many on the demo data (more cost build time)
DEMO_TRAIN = ROOT / "datasets" / "shapes" / "images" / "train"
DEMO_TRAIN_SEED = 1  # build/make_dataset.py's train split
GENERATED_TRAIN = RUNS / "calibration" / "shapes"


class QuantizeError(RuntimeError):
    """INT8 could not be built; the message says why and what to do."""


def default_calibration_folder(facts: ModelFacts) -> Path:
    """The demo data set's train split for the demo's classes, the shipped samples otherwise."""
    from yolo_triton.data import synth

    if tuple(facts.names) != tuple(synth.CLASS_NAMES):
        return SAMPLES
    if DEMO_TRAIN.is_dir() and any(DEMO_TRAIN.iterdir()):
        return DEMO_TRAIN
    folder = GENERATED_TRAIN / "images" / "train"
    if len(list(folder.glob("*.jpg"))) < CALIB_COUNT:  # image i of a split is a function of (seed, i)
        synth.generate_split(GENERATED_TRAIN, "train", CALIB_COUNT, DEMO_TRAIN_SEED)
    return folder


def calibration_files(folder: Path, limit: int = CALIB_COUNT) -> list[Path]:
    from yolo_triton.repository.tensorrt.calibration import calibration_images
    from yolo_triton.repository.tensorrt.settings import BuildError

    try:
        files = calibration_images(folder, limit)
    except BuildError as e:
        raise QuantizeError(str(e)) from None
    if not files:
        raise QuantizeError(f"--calib-images {folder}: no image files in it (jpg, png, ...); "
                            "pass a folder of images like the ones the model will serve")
    return files


def head_nodes(onnx_path: Path) -> list[str]:
    """Names of the detect head's nodes: the scope of the graph's last Sigmoid (as Ultralytics does)."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    sigmoids = [n.name for n in graph.node if n.op_type == "Sigmoid"]
    if not sigmoids or "/" not in sigmoids[-1].lstrip("/"):
        raise QuantizeError(f"{onnx_path}: no detect head found (expected an Ultralytics YOLOv8 export)")
    scope = "/" + sigmoids[-1].lstrip("/").split("/", 1)[0] + "/"
    return [n.name for n in graph.node if n.name.startswith(scope)]


def quantize(fp32: Path, dest: Path, files: Sequence[Path], imgsz: int) -> Path:
    """Write the INT8 (QDQ) model of `fp32` to `dest`, calibrated on `files`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from yolo_triton import spec
    from yolo_triton.repository.tensorrt.calibration import network_inputs

    pixels = network_inputs(files, imgsz)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(pixels):
                return None
            self.i += 1
            return {spec.PIXELS.name: pixels[self.i - 1 : self.i]}

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.onnx")
    quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=head_nodes(fp32), calibrate_method=CalibrationMethod.MinMax)
    tmp.replace(dest)  # a half-written model is never taken for the INT8 detector
    return dest
