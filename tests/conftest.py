"""Shared fixtures: a model repository built from the shipped demo checkpoint, and a real
tritonserver on free local ports serving it (one per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.repository import configs as repository
from yolo_triton.serve.launcher import Server

ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = ROOT / "assets" / "demo" / "yolov8n-shapes.pt"
SAMPLES = ROOT / "assets" / "samples"
VAL_SUBSET = 40  # the CI subset of the demo val split (repository.gate runs the build's gate on the same 40)


def build_repo(weights: Path | str, dest: Path, imgsz: int | None = None) -> Path:
    from yolo_triton.repository import build as build_engines

    args = ["--weights", str(weights), "--repo", str(dest), "--gpu-artefact"]  # test_gpu checks it on the CPU
    if imgsz:
        args += ["--imgsz", str(imgsz)]
    assert build_engines.main(args) == 0
    return dest


def pytest_configure(config: pytest.Config) -> None:
    import sys

    import torch

    sys.path.insert(0, str(ROOT / "build"))
    os.environ.setdefault("YOLO_ORT_THREADS", "2")
    if not torch.cuda.is_available():
        # The GPU's Triton kernels (pipeline/nms_kernels.py) then run on CPU tensors in Triton's
        # interpreter, so CI checks them too; it must be chosen before they are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def weights() -> Path:
    assert DEMO_WEIGHTS.exists(), f"{DEMO_WEIGHTS} missing: it ships with the project"
    return DEMO_WEIGHTS


@pytest.fixture(scope="session")
def repo(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(weights, tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def facts(repo: Path) -> repository.ModelFacts:
    return repository.read_facts(repo)


@pytest.fixture(scope="session")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with Server(repo, log=log) as s:
        yield s


@pytest.fixture()
def client(server: Server):
    """The FP32 fused pipeline, named: tests that compare with Ultralytics value for value need the
    checkpoint's own arithmetic. `yolov8n` itself is INT8 here once its gate passed (test_int8.py)."""
    with DetectorClient(server.url, model=spec.variant("ort_fused").ensemble, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="session")
def val_subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict]:
    """The first VAL_SUBSET images of the demo val split, with their labels and data YAML."""
    from yolo_triton.client import evaluate

    data_yaml = evaluate.write_val_split(tmp_path_factory.mktemp("shapes"), count=VAL_SUBSET)
    return evaluate.val_images(data_yaml, None)


@pytest.fixture(scope="session")
def ultralytics_model(weights: Path):
    from ultralytics import YOLO

    return YOLO(str(weights))


def sample_images() -> dict[str, np.ndarray]:
    """The shipped samples, read as BGR."""
    return {p.name: cv2.imread(str(p)) for p in sorted(SAMPLES.glob("*.jpg"))}
