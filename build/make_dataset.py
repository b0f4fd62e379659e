"""Write the synthetic shapes data set (YOLO layout) and print the path of its data YAML.

    .venv/bin/python build/make_dataset.py                      # datasets/shapes, 1500 train / 200 val
    .venv/bin/python build/make_dataset.py --train 200 --val 50 --root datasets/shapes-small

Train and val are drawn from different seeds so they never share an image; the same arguments
always produce byte-identical files (see `yolo_triton.synth`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from yolo_triton import synth

DEFAULT_ROOT = Path("datasets/shapes")
DEFAULT_TRAIN, DEFAULT_VAL = 1500, 200
DEFAULT_TRAIN_SEED, DEFAULT_VAL_SEED = 1, 2


def add_dataset_args(parser: argparse.ArgumentParser) -> None:
    """Options shared with build/train_demo.py, so both scripts mean the same data by default."""
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data set directory (default: %(default)s)")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="train images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=DEFAULT_VAL, help="val images (default: %(default)s)")
    parser.add_argument("--train-seed", type=int, default=DEFAULT_TRAIN_SEED, help="(default: %(default)s)")
    parser.add_argument("--val-seed", type=int, default=DEFAULT_VAL_SEED, help="(default: %(default)s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_args(parser)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    yaml_path = synth.write_dataset(args.root, args.train, args.val, args.train_seed, args.val_seed)
    print(f"wrote {args.train} train / {args.val} val images in {time.perf_counter() - t0:.1f} s", flush=True)
    print(yaml_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
