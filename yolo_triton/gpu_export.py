"""The artefact the GPU (PyTorch FP16) detector loads (filled in by the GPU work)."""

from __future__ import annotations

from pathlib import Path

from yolo_triton.repository import ModelFacts


def export_for_gpu(model, facts: ModelFacts, repo: Path) -> str:  # noqa: ANN001
    return "GPU detector artefact skipped: not implemented yet"
