"""Write the synthetic shapes data set (YOLO layout) and print the path of its data YAML.

    .venv/bin/python build/make_dataset.py                      # datasets/shapes, 1500 train / 200 val
    .venv/bin/python build/make_dataset.py --train 200 --val 50 --root datasets/shapes-small
    .venv/bin/python build/make_dataset.py --samples assets/samples   # only the sample images

Train and val are drawn from different seeds so they never share an image; the same arguments
always produce byte-identical files (see `yolo_triton.data.synth`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2

from yolo_triton.data import synth

DEFAULT_ROOT = Path("datasets/shapes")
DEFAULT_TRAIN, DEFAULT_VAL = 1500, 200
DEFAULT_TRAIN_SEED, DEFAULT_VAL_SEED = 1, 2
# The shipped sample images: a seed used by neither split, and sizes chosen to exercise the
# letterbox in every direction (landscape, portrait, square, very wide, smaller than the input).
SAMPLES_SEED = 3
SAMPLE_SIZES: tuple[tuple[str, int, int], ...] = (
    ("shapes_landscape", 640, 427),
    ("shapes_portrait", 360, 600),
    ("shapes_square", 512, 512),
    ("shapes_wide", 600, 260),
    ("shapes_small", 200, 200),
)


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """Options shared with build/train_demo.py, so both scripts mean the same data by default."""
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data set directory (default: %(default)s)")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="train images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=DEFAULT_VAL, help="val images (default: %(default)s)")
    parser.add_argument("--train-seed", type=int, default=DEFAULT_TRAIN_SEED, help="(default: %(default)s)")
    parser.add_argument("--val-seed", type=int, default=DEFAULT_VAL_SEED, help="(default: %(default)s)")


def write_samples(out_dir: Path, seed: int = SAMPLES_SEED) -> list[Path]:
    """Render the sample images (no labels): demo inputs that no split contains.

    For each size the first scene (in seed order) with several shapes of every class is kept, so
    each sample shows the detector all three classes; the scan is deterministic, so the files
    are re-creatable.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (stem, w, h) in enumerate(SAMPLE_SIZES):
        want = 3 if min(w, h) < synth.MIN_SIDE else 5
        for k in range(1000):
            img, boxes = synth.render_image(synth.image_rng(seed, i * 1000 + k), width=w, height=h)
            if len(boxes) >= want and len({b.cls for b in boxes}) == len(synth.CLASS_NAMES):
                break
        path = out_dir / f"{stem}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {path}")
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_args(parser)
    parser.add_argument("--samples", type=Path, help="write only the sample images, into this directory")
    args = parser.parse_args(argv)
    if args.samples is not None:
        for path in write_samples(args.samples):
            print(path)
        return 0
    t0 = time.perf_counter()
    yaml_path = synth.write_dataset(args.root, args.train, args.val, args.train_seed, args.val_seed)
    print(f"wrote {args.train} train / {args.val} val images in {time.perf_counter() - t0:.1f} s", flush=True)
    print(yaml_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
