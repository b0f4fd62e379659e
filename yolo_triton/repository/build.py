"""Export a YOLOv8 checkpoint into the Triton model repository.

    yolo-triton build [--weights yolov8n.pt] [--imgsz 640] [--repo model_repository] [--fallback]

Writes the ONNX detector for every ONNX variant, its INT8 twin for the CPU (static quantisation
on --calib-images, gated against Ultralytics FP32: repository.quantize, repository.gate), a
TensorRT plan where TensorRT is present, and every config.pbtxt (rendered from yolo_triton.spec
for this checkpoint's input size and classes). Re-running with the same checkpoint and size does nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from yolo_triton import spec
from yolo_triton.paths import DEFAULT_REPO, DEMO_WEIGHTS, ROOT
from yolo_triton.repository import configs as repository
from yolo_triton.repository import export


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _load_with_fallback(weights: str, fallback: bool) -> tuple[object, str, str, str]:
    """(model, what was loaded as shown, the path it loads from in any folder, the fallback's
    one-line notice or "")."""
    try:
        return export.load(weights), weights, weights, ""
    except export.WeightsUnavailable as e:
        if not fallback:
            raise
        why = e.reason
    if DEMO_WEIGHTS.exists():
        alt, shown = str(DEMO_WEIGHTS), str(DEMO_WEIGHTS.relative_to(ROOT))
        what = "the shipped demo checkpoint, 3 classes: circle, rectangle, triangle"
    else:
        alt = shown = "yolov8n.yaml"
        what = "seeded random weights: detections will be MEANINGLESS"
    notice = f"build-engines: *** FALLING BACK to {shown} ({what}) *** because {why}; {export.LOCAL_WEIGHTS_HINT}"
    return export.load(alt), shown, alt, notice


def _up_to_date(repo: Path, facts: repository.ModelFacts, weights: str) -> bool:
    onnx = repo / spec.variant("ort").detector / "1" / "model.onnx"
    try:
        old = repository.read_facts(repo)
    except (OSError, ValueError, KeyError):
        return False
    src = Path(weights)
    fresh = not src.exists() or src.stat().st_mtime <= onnx.stat().st_mtime if onnx.exists() else False
    return old == facts and fresh


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=export.DEFAULT_WEIGHTS,
                    help="checkpoint (.pt; yolov8n.pt downloads where there is internet) or architecture .yaml")
    ap.add_argument("--imgsz", type=int, default=None, help="input size (default: the checkpoint's)")
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    ap.add_argument("--fallback", action="store_true",
                    help="if the weights cannot be had, use the shipped demo checkpoint instead of failing")
    ap.add_argument("--force", action="store_true", help="rebuild even if the artefacts are up to date")
    ap.add_argument("--gpu-artefact", action="store_true",
                    help="export the GPU detector's torch.export program even where no GPU is visible")
    ap.add_argument("--trt-precision", choices=("fp16", "fp32", "int8"), default="fp16")
    ap.add_argument("--calib-images", type=Path, default=None,
                    help="images for INT8 calibration (CPU INT8 default: the demo data set's train split for "
                         "its classes, assets/samples otherwise)")
    ap.add_argument("--gate-data", type=Path, default=None,
                    help="labelled YOLO data YAML for the INT8 accuracy gate (default: the demo val split for "
                         "its classes; other checkpoints without it keep yolov8n on FP32)")
    ap.add_argument("--trt-opt-batch", type=int, default=repository.TRT_OPT_BATCH,
                    help=f"batch size TensorRT tunes for (profile 1..{spec.MAX_BATCH})")
    ap.add_argument("--trt-workspace", type=int, default=4096, help="TensorRT builder workspace, MiB")
    ap.add_argument("--trt-builder", choices=("auto", "python", "trtexec"), default="auto",
                    help="TensorRT Python API or trtexec (auto: the Python API when it imports)")
    args = ap.parse_args(argv)

    try:
        model, used, loads_from, notice = _load_with_fallback(args.weights, args.fallback)
        if notice:
            print(notice, flush=True)
        facts = export.facts_of(model, used, args.imgsz)
    except (export.WeightsUnavailable, ValueError) as e:
        print(f"build-engines: {e}", file=sys.stderr)
        return 2

    repo: Path = args.repo
    if not args.force and _up_to_date(repo, facts, loads_from):
        print(f"build-engines: up to date ({used}, imgsz {facts.imgsz}, {len(facts.names)} classes)")
        repository.write(repo, facts)
        # A repository exported elsewhere still needs this machine's TensorRT plan.
        onnx = repo / spec.variant("ort").detector / "1" / "model.onnx"
        if not _report_int8(onnx, facts, repo, args, loads_from):
            return 2
        print(f"build-engines: {_tensorrt(onnx, facts, repo, args)}", flush=True)
        return 0

    onnx = export.export_onnx(model, facts, repo / spec.variant("ort").detector / "1" / "model.onnx")
    for v in spec.VARIANTS:
        if v.artefact == "model.onnx" and v.detector != "detector_ort" and not v.runtime.gated:
            _link_or_copy(onnx, repo / v.detector / "1" / "model.onnx")
    repository.write(repo, facts)
    print(f"build-engines: {used} -> ONNX ({onnx.stat().st_size / 1e6:.1f} MB, imgsz {facts.imgsz}, "
          f"{len(facts.names)} classes, dynamic batch)", flush=True)

    if not _report_int8(onnx, facts, repo, args, loads_from):
        return 2
    print(f"build-engines: {_gpu_artefact(model, facts, repo, args.gpu_artefact)}", flush=True)
    print(f"build-engines: {_tensorrt(onnx, facts, repo, args)}", flush=True)
    if notice:  # again as the last line: the export's own output above would bury it
        print(notice, flush=True)
    return 0


def _gpu_artefact(model, facts: repository.ModelFacts, repo: Path, asked: bool) -> str:  # noqa: ANN001
    """The GPU detector's artefact, only when asked for or when a GPU is visible (it is served nowhere else)."""
    from yolo_triton.serve.install import gpu_available

    if not (asked or gpu_available()):
        return ("GPU detector artefact skipped: no GPU visible (--gpu-artefact exports it anyway, for a GPU "
                "machine that serves this repository)")
    from yolo_triton.repository import gpu_export

    return gpu_export.export_for_gpu(model, facts, repo)


def _report_int8(onnx: Path, facts: repository.ModelFacts, repo: Path, args: argparse.Namespace,
                 weights: str) -> bool:
    """Print the INT8 step's outcome; False when the caller's --calib-images cannot be used."""
    from yolo_triton.repository.quantize import QuantizeError

    try:
        print(f"build-engines: {_int8(onnx, facts, repo, args, weights)}", flush=True)
    except QuantizeError as e:
        print(f"build-engines: {e}", file=sys.stderr)
        return False
    return True


def _int8(onnx: Path, facts: repository.ModelFacts, repo: Path, args: argparse.Namespace, weights: str) -> str:
    """The INT8 detector (quantised when missing or older than the FP32 one) and its gate record."""
    from yolo_triton.repository import gate, quantize

    int8_runtimes = [r for r in spec.RUNTIMES if r.precision == "int8" and r.artefact == "model.onnx"]
    first = repo / int8_runtimes[0].detector / "1" / "model.onnx"
    made = ""
    if args.force or not first.exists() or first.stat().st_mtime < onnx.stat().st_mtime or args.calib_images:
        folder = args.calib_images or quantize.default_calibration_folder(facts)
        try:
            files = quantize.calibration_files(folder)
            quantize.quantize(onnx, first, files, facts.imgsz)
        except quantize.QuantizeError as e:
            if args.calib_images:  # asked for: the caller's mistake, not a step to skip
                raise
            return f"INT8 skipped: {e}"
        made = f"INT8 (QDQ) calibrated on {len(files)} images from {folder}; "
        for r in int8_runtimes[1:]:
            _link_or_copy(first, repo / r.detector / "1" / "model.onnx")
    result = None if made or args.gate_data else gate.recorded(repo, int8_runtimes[0])
    if result is None:
        result = gate.run(first, onnx, facts, weights, args.gate_data)
        gate.record(repo, result)
    return made + ("gate passed: " if result.passed else "gate NOT passed (yolov8n stays FP32): ") + result.reason


def _tensorrt(onnx: Path, facts: repository.ModelFacts, repo: Path, args: argparse.Namespace) -> str:
    from yolo_triton.repository import tensorrt as tensorrt_build

    return tensorrt_build.build_for_repository(
        onnx, facts, repo, args.trt_precision, args.calib_images, opt_batch=args.trt_opt_batch,
        workspace_mib=args.trt_workspace, builder=args.trt_builder, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
