"""The accuracy gate of a quantised detector, run by the build and recorded in the repository.

`yolov8n` may point at an INT8 variant only if INT8 scores within GATE_BOUND mAP50-95 of
Ultralytics' FP32 validator on labelled validation images. Running that at every launch would
cost a validator run per start; so the build runs it once, on GATE_IMAGES images, and writes the
result to `gate.json` with the SHA-256 of the INT8 model it measured. The launcher reads it and
takes the INT8 variant only when the record passed and names the very file it would serve
(`verdict`); a rebuilt or swapped model without a new record is not trusted.

The INT8 side runs in process through the stage objects the served CPU pipeline runs
(`pipeline.cpu.CpuPipeline`), scored with the same code as `yolo-triton eval`
(`client.evaluate.scored_map`). `make eval MODEL=yolov8n_ort_int8_fused` measures the served
variant over gRPC on the whole split.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.paths import SAMPLES
from yolo_triton.repository.facts import ModelFacts

GATE_FILE = "gate.json"
GATE_BOUND = 0.01  # mAP50-95 below Ultralytics FP32 that INT8 may lose (issue: the accuracy gate)
GATE_IMAGES = 40  # the demo val split's first 40: a validator run of a few seconds at 320


@dataclass(frozen=True)
class GateResult:
    precision: str
    passed: bool
    reason: str  # one line: the figures, or why the gate did not run
    map50_95: float = float("nan")
    reference: float = float("nan")
    images: int = 0
    artefact_sha256: str = ""

    @property
    def delta(self) -> float:
        return self.map50_95 - self.reference


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _labelled_data(facts: ModelFacts, weights: str, data: Path | None, tmp: Path) -> tuple[Path, str, bool]:
    """The gate's validation set and what it is: `data`; else the demo val split for a checkpoint
    with its classes; else the shipped samples labelled by Ultralytics' FP32 predict
    (`pseudo_labelled`; the third value says so)."""
    from yolo_triton.client import evaluate
    from yolo_triton.data import synth

    if data is not None:
        return data, str(data), False
    if tuple(facts.names) == tuple(synth.CLASS_NAMES):
        return evaluate.write_val_split(tmp, count=GATE_IMAGES), "the demo val split", False
    return pseudo_labelled(weights, facts, tmp), f"{SAMPLES.name} labelled by Ultralytics FP32 predict", True


def pseudo_labelled(weights: str, facts: ModelFacts, root: Path) -> Path:
    """The shipped samples with Ultralytics' FP32 predictions (confidence 0.25) as their labels.

    A checkpoint without labelled data of its classes (the crowded one, a user's) is still gated:
    then the gate measures how far INT8 moves from what FP32 finds, scored like any labels. The
    reference is then the FP32 network through the same served pipeline, which answers as
    Ultralytics' predict box for box (tests/test_serving.py): on a crowded scene Ultralytics' val
    at confidence 0.001 scored its own predictions far lower than its predict does (0.37 vs 0.59
    mAP50-95 on the crowded checkpoint's samples), so it is no reference there."""
    from ultralytics import YOLO

    from yolo_triton.client import evaluate, images

    model = YOLO(weights)
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for path in sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in images.IMAGE_SUFFIXES):
        # On the CPU wherever the build runs: the labels a CPU runtime is gated on do not depend on
        # whether the build machine has a GPU (nor on its TF32 convolutions).
        box = model.predict(images.read(path), imgsz=facts.imgsz, rect=False, conf=spec.DEFAULT_CONF,
                            device="cpu", verbose=False)[0].boxes
        rows = np.column_stack([box.cls.numpy(), box.xywhn.numpy()])
        shutil.copy(path, root / "images" / "val" / path.name)
        np.savetxt(root / "labels" / "val" / f"{path.stem}.txt", rows, fmt=["%d"] + ["%.6f"] * 4)
    return evaluate.write_val_yaml(root, facts.names)


def _in_process(onnx_path: Path, imgsz: int):  # noqa: ANN202 - client.evaluate.Detect
    """The served CPU pipeline's stage objects on one image at the validator's settings."""
    from yolo_triton.client import evaluate
    from yolo_triton.pipeline.cpu import CpuPipeline
    from yolo_triton.pipeline.postprocess import unpad

    pipeline = CpuPipeline(onnx_path, imgsz)
    limits = [[(evaluate.VAL_CONF, evaluate.VAL_IOU, spec.DEFAULT_MAX_DET)]]

    def detect(image: np.ndarray):  # noqa: ANN202 - nms.Detections
        (out,) = pipeline([image[None]], limits, [[True]])
        if isinstance(out, Exception):
            raise out
        return unpad(*out)[0]

    return detect


def run(int8: Path, fp32: Path, facts: ModelFacts, weights: str, data: Path | None = None,
        limit: int = GATE_IMAGES) -> GateResult:
    """INT8 mAP50-95 (in process) against Ultralytics FP32 val on the same images."""
    from yolo_triton.client import evaluate
    from yolo_triton.data import crowded

    weights = crowded.resolve(weights)  # a repository built with `--weights crowded` records that name
    digest = sha256(int8)
    with tempfile.TemporaryDirectory() as tmp:
        data_yaml, what, pseudo = _labelled_data(facts, weights, data, Path(tmp))
        files, meta = evaluate.val_images(data_yaml, limit)
        if len(meta["names"]) != len(facts.names) or not files:
            return GateResult("int8", False, f"--gate-data {data_yaml}: {len(files)} images, "
                              f"{len(meta['names'])} classes; the checkpoint has {len(facts.names)}",
                              artefact_sha256=digest)
        ours = evaluate.scored_map(files, _in_process(int8, facts.imgsz))
        if pseudo:
            ref, ref_name = evaluate.scored_map(files, _in_process(fp32, facts.imgsz)), "FP32 (served = predict)"
        else:
            ref, ref_name = evaluate.ultralytics_map(weights, meta, files, facts.imgsz), "Ultralytics FP32"
    delta = ours.map50_95 - ref.map50_95
    passed = delta >= -GATE_BOUND
    reason = (f"INT8 mAP50-95 {ours.map50_95:.4f} vs {ref_name} {ref.map50_95:.4f} "
              f"(delta {delta:+.4f}, bound -{GATE_BOUND}) on {len(files)} images of {what}")
    return GateResult("int8", passed, reason, ours.map50_95, ref.map50_95, len(files), digest)


def record(repo: Path, result: GateResult) -> None:
    path = repo / GATE_FILE
    old = json.loads(path.read_text()) if path.exists() else {}
    old[result.precision] = asdict(result)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=1))
    tmp.replace(path)


def read(repo: Path, precision: str) -> GateResult | None:
    try:
        return GateResult(**json.loads((repo / GATE_FILE).read_text())[precision])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded(repo: Path, runtime: spec.Runtime) -> GateResult | None:
    """The recorded gate of the model this runtime's detector would load now, or None."""
    result = read(repo, runtime.precision)
    artefact = repo / runtime.detector / "1" / runtime.artefact
    if result is None or not artefact.exists() or sha256(artefact) != result.artefact_sha256:
        return None
    return result


def verdict(repo: Path, runtime: spec.Runtime) -> tuple[bool, str]:
    """May `yolov8n` serve this runtime? (yes/no, the reason in one line)."""
    if not runtime.gated:
        return True, f"{runtime.precision.upper()}, the checkpoint's own arithmetic"
    result = recorded(repo, runtime)
    if result is None:
        return False, (f"no {runtime.precision.upper()} gate recorded in {GATE_FILE} for the model in "
                       f"{runtime.detector} (run make build-engines)")
    return result.passed, ("gate passed: " if result.passed else "gate failed: ") + result.reason
