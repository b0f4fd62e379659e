"""TensorRT plans for the native tensorrt_plan detector (filled in by the TensorRT work)."""

from __future__ import annotations

from pathlib import Path

from yolo_triton.repository import ModelFacts


def build_for_repository(onnx: Path, facts: ModelFacts, repo: Path, precision: str,
                         calib_images: Path | None) -> str:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT plans skipped: the tensorrt Python package is not installed"
    return "TensorRT plans skipped: not implemented yet"
