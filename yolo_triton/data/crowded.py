"""A checkpoint that sees a crowded scene: YOLOv8n with seeded weights, made to find about 190
overlapping boxes on bus.jpg at confidence 0.25.

Why: no pretrained weights can be downloaded here, and seeded weights detect nothing (the head's
class biases start near -10, and BatchNorm's default statistics make activations vanish or
explode), so a benchmark on them never gives NMS any work. Users' scenes are crowded. This
checkpoint costs what yolov8n.pt costs in the network and gives decode and NMS a crowded scene's
work: many candidates, dense overlaps, dozens of classes.

How (a pure function of the seed and the shipped sample images):
  1. build `yolov8n.yaml` with `torch.manual_seed(SEED)`;
  2. re-estimate every BatchNorm's statistics from a few letterboxed sample images with
     train-mode forward passes and cumulative averaging (`momentum=None`), so activations keep a
     sane scale through the 20-odd layers;
  3. set the class biases of the detect head to CLASS_BIAS, which puts about 190 boxes on
     bus.jpg (Ultralytics' predict at 640, confidence 0.25; the cap is 300).

The BatchNorm passes run on the CPU in one thread whatever GPU or cores are present, so machines
make the same weights (up to the CPU's own kernels). It is saved as an Ultralytics checkpoint
with COCO's class names, and loads like any other (`YOLO(path)`, `yolo-triton build --weights
path`, or `--weights crowded`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from yolo_triton.paths import RUNS, SAMPLES

SEED = 0
IMGSZ = 640
CLASS_BIAS = -4.75
BN_PASSES = 3
CALIBRATION = ("bus.jpg", "shapes_landscape.jpg", "shapes_square.jpg", "shapes_portrait.jpg")
DEFAULT_PATH = RUNS / "checkpoints" / f"yolov8n-crowded-s{SEED}.pt"
NAME = "crowded"  # what `--weights` accepts for this checkpoint in the benchmarks


def calibration_batch(folder: Path = SAMPLES) -> np.ndarray:
    """The sample images letterboxed to IMGSZ as the served path does: float32 [N, 3, S, S] RGB."""
    from yolo_triton.repository.tensorrt.calibration import network_inputs

    return network_inputs([folder / name for name in CALIBRATION], IMGSZ)


def make(dest: Path = DEFAULT_PATH) -> Path:
    """Write the checkpoint to `dest` (kept if it is already there) and return its path."""
    if dest.exists():
        return dest
    import torch
    from ultralytics import YOLO

    torch.manual_seed(SEED)
    yolo = YOLO("yolov8n.yaml")
    net = yolo.model
    batch = torch.from_numpy(calibration_batch())
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the passes
    net.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order for the statistics, whatever the core count
    try:
        with torch.no_grad():
            for _ in range(BN_PASSES):
                net(batch)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        for branch in net.model[-1].cv3:  # the detect head's class convolutions, one per stride
            branch[-1].bias.fill_(CLASS_BIAS)
    net.eval()
    net.names = coco_names()
    dest.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"model": net.half(), "train_args": {"model": "yolov8n.yaml", "imgsz": IMGSZ, "task": "detect"},
            "epoch": -1, "date": None, "version": "crowded-seed", "note": __doc__.splitlines()[0]}
    tmp = dest.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(dest)  # a half-written file is never taken for the checkpoint
    return dest


def coco_names() -> dict[int, str]:
    """COCO's 80 class names as Ultralytics ships them, so boxes read like yolov8n.pt's."""
    import yaml
    from ultralytics.cfg import DEFAULT_CFG_PATH

    coco = yaml.safe_load((DEFAULT_CFG_PATH.parent / "datasets" / "coco.yaml").read_text())
    return {int(k): str(v) for k, v in coco["names"].items()}


def resolve(weights: str) -> str:
    """`crowded` means this checkpoint (made on first use); anything else is passed through."""
    return str(make()) if weights == NAME else weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_PATH, help="where to write it (default %(default)s)")
    args = ap.parse_args(argv)
    print(f"crowded checkpoint: {make(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
