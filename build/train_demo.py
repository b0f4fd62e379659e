"""Train the demo detector: YOLOv8n from scratch on the synthetic shapes data, on the CPU.

The serving stack needs a real YOLOv8n checkpoint to serve, and none can be downloaded, so this
script makes one: the genuine `yolov8n.yaml` architecture (its 80-class head replaced by the
3 classes of the data YAML) trained without pretrained weights on `yolo_triton.data.synth` images.
The result is copied to assets/demo/yolov8n-shapes.pt and its mAP on the val split is printed.

The shipped checkpoint was made with exactly:

    .venv/bin/python build/train_demo.py --name shapes8

(`--name` only picks the run directory under runs/train_demo; everything else is a default:
1500 train / 200 val images from seeds 1 / 2, imgsz 320, 8 epochs, batch 8, AdamW lr0 0.002,
training seed 0). It reached mAP50 0.903 / mAP50-95 0.741 on val and took 47 minutes in all on
2 CPU cores that were partly busy with other work; on idle cores an epoch takes about 4.5 minutes
(1.3 s per batch of 8, plus validation), about 40 minutes in all. Rerunning it regenerates the data set if
datasets/shapes is missing or was made with other parameters. A quick check of the pipeline
(about a minute):

    .venv/bin/python build/train_demo.py --train 64 --val 32 --root datasets/shapes-smoke \
        --epochs 1 --name smoke --out runs/smoke.pt

Choices, and why:
- imgsz 320: a quarter of the work of 640 per image, and the shapes are sized so that even the
  smallest spans ~16 px at 320. The checkpoint records imgsz 320, which the serving pipeline
  reads as its input size.
- Epochs are the budget: on 2 cores one epoch of 1500 images takes about 4.5 minutes. 6 epochs
  stopped at mAP50 0.88 (still rising about 0.03 per epoch), hence 8.
- batch 8 with nbs = batch: from scratch the number of optimizer steps is what counts. Ultralytics
  would otherwise accumulate gradients up to a nominal batch of 64, i.e. step 8x less often.
- AdamW at a fixed lr0 rather than optimizer="auto", which picks by run length and would
  silently switch optimizer if epochs or data size changed.
- warmup 0.5 epoch and close_mosaic 2: the defaults (3 warmup epochs, 10 mosaic-free ones) would
  take up most of a run this short; the mosaic-free epochs at the end let the model settle on
  whole letterboxed images, which is what val (and serving) feeds it.
- Flips and the other default augmentations stay: the shapes are symmetric under them.
- cache=False: cache="ram" makes Ultralytics' training non-deterministic, and decoding these
  small JPEGs is cheap next to the forward/backward pass.
- workers=2 is passed, but Ultralytics loads data in the main process for CPU training anyway.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from make_dataset import add_dataset_args

from yolo_triton.data import synth

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path("assets/demo/yolov8n-shapes.pt")


def train(args: argparse.Namespace) -> Path:
    """Run Ultralytics' trainer and return the path of its best.pt (optimizer already stripped)."""
    from ultralytics import YOLO

    data_yaml = synth.ensure_dataset(args.root, args.train, args.val, args.train_seed, args.val_seed)
    print(f"data: {data_yaml}", flush=True)
    model = YOLO("yolov8n.yaml")
    # An absolute project keeps the run under this repository's runs/: Ultralytics puts a relative
    # project under its global runs_dir setting instead.
    project = (REPO / "runs" / "train_demo").resolve()
    model.train(
        data=str(data_yaml),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        nbs=args.batch,
        device="cpu",
        workers=2,
        pretrained=False,
        seed=args.seed,
        deterministic=True,
        optimizer="AdamW",
        lr0=args.lr0,
        warmup_epochs=0.5,
        close_mosaic=args.close_mosaic,
        cache=False,
        plots=False,
        amp=False,
        project=str(project),
        name=args.name,
        exist_ok=True,
        patience=0,
    )
    return Path(model.trainer.best)


def make_portable(checkpoint: Path, root: Path) -> None:
    """Rewrite the training machine's absolute paths in the checkpoint's metadata as relative ones.

    Ultralytics records where it ran (project, save_dir, git root); a shipped checkpoint should
    not carry one machine's directory layout.
    """
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    prefix = str(root.resolve())

    def fix(value: object) -> object:
        if isinstance(value, str) and value.startswith(prefix):
            return value[len(prefix):].lstrip("/") or "."
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    ckpt["train_args"] = fix(ckpt.get("train_args", {}))
    ckpt.pop("git", None)
    for key in ("model", "ema"):
        model = ckpt.get(key)
        if model is not None and isinstance(getattr(model, "args", None), dict):
            model.args = fix(model.args)
    torch.save(ckpt, checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_args(parser)
    parser.add_argument("--epochs", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--imgsz", type=int, default=320, help="(default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--lr0", type=float, default=0.002, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--close-mosaic", type=int, default=2, help="mosaic-free final epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    parser.add_argument("--name", default="shapes", help="run name under runs/train_demo (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint copy (default: %(default)s)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    best = train(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, args.out)
    make_portable(args.out, Path(__file__).resolve().parents[1])
    print(f"checkpoint: {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)", flush=True)

    # Validate the copied file rather than trusting the trainer's numbers: this is what ships.
    from ultralytics import YOLO

    data_yaml = args.root / "data.yaml"
    metrics = YOLO(str(args.out)).val(
        data=str(data_yaml), imgsz=args.imgsz, batch=args.batch, device="cpu", workers=2, plots=False
    )
    print(f"val mAP50 {metrics.box.map50:.4f}  mAP50-95 {metrics.box.map:.4f}", flush=True)
    print(f"total time {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
