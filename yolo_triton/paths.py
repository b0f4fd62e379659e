"""Where the project's own files are in a source checkout: the model repository it builds by
default, and the shipped assets (demo checkpoint, sample images). An installed package without
the checkout has none of these; every tool takes its paths as arguments too."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPO = ROOT / "model_repository"
DEMO_WEIGHTS = ROOT / "assets" / "demo" / "yolov8n-shapes.pt"
SAMPLES = ROOT / "assets" / "samples"
RUNS = ROOT / "runs"
