"""Load a YOLOv8 checkpoint and export the detector artefacts the repository serves.

Class names and input size are read from the checkpoint, never assumed, so a custom-trained
model deploys exactly like `yolov8n.pt`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from yolo_triton.repository.configs import ModelFacts

DEFAULT_WEIGHTS = "yolov8n.pt"
SEED = 0


LOCAL_WEIGHTS_HINT = ("pass a local checkpoint: make build-engines WEIGHTS=path/to/best.pt (or make demo WEIGHTS=…, "
                      "yolo-triton build --weights …)")


class WeightsUnavailable(RuntimeError):
    """The checkpoint could not be found or downloaded; `reason` says why, the message adds the fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}; {LOCAL_WEIGHTS_HINT}")
        self.reason = reason


def load(weights: str):  # noqa: ANN201 - ultralytics.YOLO, imported lazily (torch import is slow)
    """Load a checkpoint (`.pt`), or build an architecture (`.yaml`) with seeded random weights.

    `crowded` names the project's own crowded-scene checkpoint (yolo_triton.data.crowded), made
    on first use: seeded weights that find about 190 boxes on bus.jpg.
    """
    import torch
    from ultralytics import YOLO

    from yolo_triton.data import crowded

    weights = crowded.resolve(weights)

    if weights.endswith((".yaml", ".yml")):
        torch.manual_seed(SEED)
        return YOLO(weights)
    local = Path(weights)
    if not local.exists() and os.sep in weights:
        raise WeightsUnavailable(f"checkpoint {weights} does not exist")
    try:
        with _quiet():
            return YOLO(weights)
    except Exception as e:  # ultralytics raises several types for a failed download
        raise WeightsUnavailable(
            f"could not load {weights} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None


def facts_of(model, weights: str, imgsz: int | None) -> ModelFacts:  # noqa: ANN001
    """Input size: explicit argument, else the size the checkpoint was trained at, else 640."""
    names = model.names
    ordered = tuple(names[i] for i in sorted(names)) if isinstance(names, dict) else tuple(names)
    if imgsz is None:
        train_args = (getattr(model, "ckpt", None) or {}).get("train_args", {}) or {}
        size = train_args.get("imgsz", 640)
        imgsz = int(size if isinstance(size, int) else max(size))
    if imgsz % 32:
        raise ValueError(f"IMGSZ must be a multiple of 32 (the network's largest stride), got {imgsz}")
    return ModelFacts(imgsz=imgsz, names=ordered, source=weights)


def export_onnx(model, facts: ModelFacts, dest: Path) -> Path:  # noqa: ANN001
    """ONNX with a dynamic batch axis, written to `dest`."""
    ckpt = getattr(model, "ckpt_path", None)
    ckpt = Path(ckpt).resolve() if ckpt else None  # before the chdir below: it may be relative
    dest = dest.resolve()
    with tempfile.TemporaryDirectory() as tmp, _chdir(Path(tmp)):
        # Export writes next to the checkpoint (or into cwd for a .yaml); work on a copy elsewhere.
        if ckpt:
            local = Path(tmp) / "model.pt"
            shutil.copy(ckpt, local)
            from ultralytics import YOLO

            model = YOLO(str(local))
        with _quiet():
            out = model.export(format="onnx", imgsz=facts.imgsz, dynamic=True, simplify=True, batch=1)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(out, dest)
    return dest


@contextlib.contextmanager
def _chdir(path: Path):  # noqa: ANN202
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """Ultralytics logs every step of export; the build prints its own one-line summary."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(40)
    try:
        yield
    finally:
        LOGGER.setLevel(level)
