"""Accuracy gate: mAP of the served ensemble next to Ultralytics' own validator, same weights.

    yolo-triton eval [--data data.yaml] [--model yolov8n] [--url HOST:PORT] [--limit N]

Sends every validation image through the served ensemble over gRPC at confidence 0.001 and with
MULTI_LABEL set (every class above the threshold per box), as the Ultralytics validator does;
scores the detections with Ultralytics' metrics (`match_predictions`, `ap_per_class`), runs
`YOLO(checkpoint).val` on the same images, and prints both with the delta.
The checkpoint is the one the model repository was built from (artefact.json), so both sides
use the same weights.

Geometry: the server letterboxes every image into a square of the checkpoint's input size; the
Ultralytics side runs val with rect=False, which resizes the long side to that size and pads to
the same square, so both score the same network input. (Its default, rect=True, pads each batch
to a smaller rectangle; `--also-rect` prints that figure too.) The last line reads
`mAP50-95 served=<x> ultralytics=<y> delta=<x-y>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.client import images
from yolo_triton.client.detector import DetectorClient
from yolo_triton.paths import DEFAULT_REPO, ROOT, RUNS
from yolo_triton.pipeline.postprocess import Detections
from yolo_triton.repository import configs as repository
from yolo_triton.serve.launcher import running

DEFAULT_DATA = ROOT / "datasets" / "shapes" / "data.yaml"
VAL_CONF = 0.001
VAL_IOU = 0.7


@dataclass(frozen=True)
class MAP:
    map50: float
    map50_95: float
    images: int
    instances: int


def val_images(data_yaml: Path, limit: int | None) -> tuple[list[Path], dict]:
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    val = data["val"]
    sources = val if isinstance(val, list) else [val]
    files: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in images.IMAGE_SUFFIXES)
        elif p.suffix == ".txt":
            base = Path(data.get("path", p.parent))
            for line in p.read_text().split():
                f = Path(line)
                files.append(f if f.is_absolute() else (base / f))
        else:
            files.append(p)
    return (files[:limit] if limit else files), data


def labels_for(image: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth (classes, xyxy pixel boxes) from the YOLO label file beside the image."""
    from ultralytics.data.utils import img2label_paths

    label = Path(img2label_paths([str(image)])[0])
    rows = np.loadtxt(label, ndmin=2, dtype=np.float32) if label.exists() and label.stat().st_size else np.zeros((0, 5))
    h, w = shape
    cls = rows[:, 0].astype(int)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).astype(np.float32)
    return cls, boxes


Detect = Callable[[np.ndarray], Detections]  # one BGR image -> its detections at the gate's settings


def scored_map(files: list[Path], detect: Detect, progress: str = "") -> MAP:
    """mAP of `detect` on `files` against their YOLO labels, with Ultralytics' own matching and AP.

    `detect` is the served ensemble over gRPC (`served_map`) or the same stage objects in process
    (repository.gate), always at VAL_CONF/VAL_IOU in MULTI_LABEL mode, as the validator predicts."""
    import torch
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class, box_iou

    matcher = DetectionValidator()  # used only for its IoU-threshold matching, as its own val does
    matcher.iouv = torch.linspace(0.5, 0.95, 10)
    matcher.niou = 10
    tps, confs, pred_cls, target_cls = [], [], [], []
    for i, f in enumerate(files):
        image = images.read(f)
        det = detect(image)
        gt_cls, gt_boxes = labels_for(f, image.shape[:2])
        n = len(det.scores)
        if n and len(gt_cls):
            iou = box_iou(torch.from_numpy(gt_boxes), torch.from_numpy(det.boxes))
            tp = matcher.match_predictions(torch.from_numpy(det.classes).float(),
                                           torch.from_numpy(gt_cls).float(), iou).cpu().numpy()
        else:
            tp = np.zeros((n, 10), bool)
        tps.append(tp)
        confs.append(det.scores)
        pred_cls.append(det.classes)
        target_cls.append(gt_cls)
        if progress and (i + 1) % 50 == 0:
            print(f"  {progress}: {i + 1}/{len(files)} images", flush=True)
    tp = np.concatenate(tps)
    result = ap_per_class(tp, np.concatenate(confs), np.concatenate(pred_cls), np.concatenate(target_cls))
    ap = result[5]  # (classes present, 10 IoU thresholds)
    return MAP(float(ap[:, 0].mean()), float(ap.mean()), len(files), int(sum(len(t) for t in target_cls)))


def served_map(url: str, model: str, files: list[Path], nc: int) -> MAP:
    with DetectorClient(url, model, timeout_s=120) as client:
        return scored_map(files, lambda image: client.detect(image, conf=VAL_CONF, iou=VAL_IOU,
                                                             max_det=spec.DEFAULT_MAX_DET,
                                                             multi_label=True).detections, "served")


def ultralytics_map(weights: str, data: dict, files: list[Path], imgsz: int, rect: bool = False) -> MAP:
    """Ultralytics' validator on exactly `files` (written to a list file for its dataset loader)."""
    import yaml
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "val.txt"
        listing.write_text("\n".join(str(f.resolve()) for f in files) + "\n")
        subset = Path(tmp) / "data.yaml"
        subset.write_text(yaml.safe_dump({"path": tmp, "train": str(listing), "val": str(listing),
                                          "names": data["names"]}))
        metrics = YOLO(weights).val(data=str(subset), imgsz=imgsz, batch=16, conf=VAL_CONF, iou=VAL_IOU, rect=rect,
                                    device="cpu", plots=False, verbose=False, workers=0, project=tmp)
    box = metrics.box
    return MAP(float(box.map50), float(box.map), len(files), int(metrics.nt_per_class.sum()))


DEFAULT_VAL_COUNT, DEFAULT_VAL_SEED = 200, 2  # build/make_dataset.py's validation split


def write_val_split(root: Path, count: int = DEFAULT_VAL_COUNT, seed: int = DEFAULT_VAL_SEED) -> Path:
    """The shapes validation split alone (what training validated on), with its data YAML."""
    from yolo_triton.data import synth

    synth.generate_split(root, "val", count, seed)
    return write_val_yaml(root, synth.CLASS_NAMES)


def write_val_yaml(root: Path, class_names: tuple[str, ...] | list[str]) -> Path:
    """`root/data.yaml` for a folder with images/val and labels/val (the only split)."""
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(class_names))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: {root.resolve().as_posix()}\ntrain: images/val\nval: images/val\nnames:\n{names}")
    return yaml_path


def ensure_default_dataset(path: Path) -> None:
    if not path.exists():
        print(f"eval: generating the shapes validation split into {path.parent}", flush=True)
        write_val_split(path.parent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="YOLO data YAML (default: the shapes dataset)")
    ap.add_argument("--model", default=spec.ALIAS, help="served ensemble to evaluate")
    ap.add_argument("--url", default=None, help="a running server (default: start one)")
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    ap.add_argument("--weights", default=None, help="checkpoint for Ultralytics' side (default: the one built)")
    ap.add_argument("--limit", type=int, default=None, help="first N validation images only")
    ap.add_argument("--also-rect", action="store_true", help="also run Ultralytics' default rect=True val")
    args = ap.parse_args(argv)

    if not (args.repo / repository.FACTS_FILE).exists():
        print(f"eval: no built model in {args.repo}: run `make build-engines` (or `make demo`) first", file=sys.stderr)
        return 2
    facts = repository.read_facts(args.repo)
    from yolo_triton.data import crowded

    weights = crowded.resolve(args.weights or facts.source)
    if args.data == DEFAULT_DATA:
        ensure_default_dataset(args.data)
    files, data = val_images(args.data, args.limit)
    if not files:
        print(f"eval: no validation images found for {args.data}", file=sys.stderr)
        return 2
    names = data["names"]
    if len(names) != len(facts.names):
        print(f"eval: dataset has {len(names)} classes but the served model has {len(facts.names)}", file=sys.stderr)
        return 2
    print(f"eval: {len(files)} images from {args.data}, model {args.model}, weights {weights}, imgsz {facts.imgsz}")
    with running(args.url, args.repo, log=RUNS / "eval" / "tritonserver.log") as server:
        url = args.url or server.url
        served = served_map(url, args.model, files, len(names))
    print("  ultralytics val ...", flush=True)
    ref = ultralytics_map(weights, data, files, facts.imgsz)
    rect = ultralytics_map(weights, data, files, facts.imgsz, rect=True) if args.also_rect else None
    print(f"\n{'':<34}{'mAP50':>10}{'mAP50-95':>10}")
    print(f"{'served (' + args.model + ')':<34}{served.map50:>10.4f}{served.map50_95:>10.4f}")
    print(f"{'ultralytics val (rect=False)':<34}{ref.map50:>10.4f}{ref.map50_95:>10.4f}")
    if rect:
        print(f"{'ultralytics val (rect=True)':<34}{rect.map50:>10.4f}{rect.map50_95:>10.4f}")
    print(f"images {served.images}, instances {served.instances} (ultralytics counted {ref.instances})")
    print(f"geometry: both sides letterbox each image into {facts.imgsz}x{facts.imgsz} (long side resized to "
          f"{facts.imgsz}, centred, padded with 114); served NMS in MULTI_LABEL mode as the validator's")
    print(f"mAP50 served={served.map50:.4f} ultralytics={ref.map50:.4f} delta={served.map50 - ref.map50:+.4f}")
    print(f"mAP50-95 served={served.map50_95:.4f} ultralytics={ref.map50_95:.4f} "
          f"delta={served.map50_95 - ref.map50_95:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
