"""Synthetic shape-detection data: the stand-in for a real labelled data set.

The demo detector has to be trained from scratch on a couple of CPU cores, so it needs a task
that a nano model can learn in minutes and whose labels are exactly right, yet is not so clean
that the detector only works on flat backgrounds. Every image is therefore a cluttered or noisy
background (gradients, colour blotches, pixel noise, stray lines and irregular blobs that are
deliberately *not* one of the classes) with circles, rectangles and triangles drawn on top, filled
or outlined, in colours chosen to stand out from what is underneath them, overlapping each other.

Everything is a pure function of a seed: image `i` of a split comes from the generator seeded
with `(seed, i)`, so a split can be regrown bit-for-bit, extended without changing its existing
images, and train and val never share an image as long as their seeds differ.

Output is Ultralytics' YOLO layout (`images/<split>/*.jpg`, `labels/<split>/*.txt` holding
`class cx cy w h` normalised to the image) plus a data YAML whose `names` fix the class order.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "rectangle", "triangle")
CIRCLE, RECTANGLE, TRIANGLE = range(len(CLASS_NAMES))

# Bump whenever the rendering changes, so cached data sets made by an older generator are regrown.
GENERATOR_VERSION = 1

MIN_SIDE, MAX_SIDE = 240, 640
# A shape whose visible part is smaller than this share of its own pixels is left unlabelled:
# a detector cannot be blamed for missing a sliver, and must not be rewarded for guessing one.
MIN_VISIBLE_FRACTION = 0.4
# Shapes are sized against the longer image side because that side fixes the letterbox scale:
# at 5 % of it a shape still spans ~16 px in a 320 px network input.
MIN_SIZE_OF_LONG_SIDE = 0.05
MAX_SIZE_OF_SHORT_SIDE = 0.45
MIN_SIZE_PX = 18
# Squared BGR distance a shape's colour must keep from the mean colour beneath it; below this a
# filled shape on a similar background is invisible even to a human annotator.
MIN_CONTRAST_SQ = 85.0**2
JPEG_QUALITY = 90
STAMP_NAME = "synth.json"


class Box(NamedTuple):
    """One labelled object in pixel coordinates (x2, y2 exclusive), as `render_image` returns it."""

    cls: int
    x1: float
    y1: float
    x2: float
    y2: float


# --------------------------------------------------------------------------------------------------
# Backgrounds


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A linear or radial blend of two colours: smooth, so shapes must be found by their edges."""
    c0, c1 = _random_colour(rng), _random_colour(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.6:
        theta = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(theta) + yy * math.sin(theta)
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(xx - cx, yy - cy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c0 + t[..., None] * (c1 - c0)


def _blotches(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour noise: a tiny random image blown up, giving soft-edged patches."""
    gh, gw = int(rng.integers(2, 9)), int(rng.integers(2, 9))
    grid = rng.integers(0, 256, size=(gh, gw, 3)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _flat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(_random_colour(rng), (h, w, 3)).copy()


def _draw_clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Distractors: straight lines and ragged blobs, so the model learns shape, not 'any edge'.

    Blobs are polygons with strongly jittered radii; their vertices stay too irregular to read as
    a circle, rectangle or triangle, so leaving them unlabelled is honest.
    """
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 9))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 5))):
        n = int(rng.integers(9, 15))
        r = rng.uniform(0.04, 0.15) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ang = np.sort(rng.uniform(0, 2 * math.pi, size=n))
        rad = r * rng.uniform(0.35, 1.0, size=n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], colour, cv2.LINE_AA)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(0, 3)
    base = (_gradient, _blotches, _flat)[kind](rng, h, w)
    if rng.random() < 0.5:  # mix two kinds so backgrounds are not all of one family
        other = (_gradient, _blotches, _flat)[rng.integers(0, 3)](rng, h, w)
        a = rng.uniform(0.3, 0.7)
        base = a * base + (1 - a) * other
    img = np.clip(base, 0, 255).astype(np.uint8)
    _draw_clutter(rng, img)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.6, 2.0))
    sigma = rng.uniform(0, 18)
    if sigma > 1:
        img = np.clip(img + rng.normal(0, sigma, size=img.shape), 0, 255).astype(np.uint8)
    return img


# --------------------------------------------------------------------------------------------------
# Shapes


def _shape_polygon(rng: np.random.Generator, cls: int, size: float) -> np.ndarray:
    """Vertices (float, centred on the origin) of a rectangle or triangle whose larger extent is `size`.

    Triangles keep every interior angle >= 25 degrees: slivers would be lines, not triangles.
    Rectangles are sometimes rotated; their label is still the tight axis-aligned box, which is
    what a YOLO box can express.
    """
    if cls == RECTANGLE:
        aspect = math.exp(rng.uniform(math.log(0.35), math.log(1 / 0.35)))
        w, h = (1.0, 1.0 / aspect) if aspect >= 1 else (aspect, 1.0)
        angle = rng.uniform(0, 90) if rng.random() < 0.3 else 0.0
        pts = cv2.boxPoints(((0.0, 0.0), (w, h), angle)).astype(np.float64)
    else:
        gaps = np.deg2rad(50 + 210 * rng.dirichlet((2.0, 2.0, 2.0)))
        ang = rng.uniform(0, 2 * math.pi) + np.concatenate([[0.0], np.cumsum(gaps[:2])])
        pts = np.stack([np.cos(ang), np.sin(ang)], axis=1)
        pts *= rng.uniform(0.75, 1.25, size=2)  # mild stretch: not every triangle is inscribed
    pts -= (pts.min(0) + pts.max(0)) / 2
    return pts * (size / float((pts.max(0) - pts.min(0)).max()))


def _pick_colour(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
    """A colour that stands out from what the shape will cover (best of a few random draws)."""
    under = img[mask > 0].reshape(-1, 3).astype(np.float32)
    ref = under.mean(0) if len(under) else np.full(3, 127.0, np.float32)
    best, best_d = None, -1.0
    for _ in range(12):
        c = _random_colour(rng)
        d = float(((c - ref) ** 2).sum())
        if d >= MIN_CONTRAST_SQ:
            return tuple(int(v) for v in c)
        if d > best_d:
            best, best_d = c, d
    return tuple(int(v) for v in best)


def _draw_shape(
    img: np.ndarray,
    mask: np.ndarray,
    cls: int,
    centre: tuple[float, float],
    size: float,
    poly: np.ndarray | None,
    colour: tuple[int, int, int],
    thickness: int,
    antialias: bool,
) -> None:
    """Draw one shape into `img` (anti-aliased) or `mask` (hard-edged, value 1).

    The same call draws both so the mask used for visibility and the box is exactly the painted
    footprint; thickness < 0 means filled, as in OpenCV.
    """
    target = img if antialias else mask
    col = colour if antialias else 1
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    shift = 4  # sub-pixel vertices, so small shapes are not snapped to the integer grid
    scale = 1 << shift
    cx, cy = centre
    if cls == CIRCLE:
        c = (int(round(cx * scale)), int(round(cy * scale)))
        r = int(round(size / 2 * scale))
        cv2.circle(target, c, r, col, thickness, line, shift)
        return
    pts = np.round((poly + (cx, cy)) * scale).astype(np.int32)
    if thickness < 0:
        cv2.fillPoly(target, [pts], col, line, shift)
    else:
        cv2.polylines(target, [pts], True, col, thickness, line, shift)


def render_image(
    rng: np.random.Generator,
    width: int | None = None,
    height: int | None = None,
    max_shapes: int = 8,
) -> tuple[np.ndarray, list[Box]]:
    """Render one scene and the honest labels for it.

    Returns the BGR uint8 image and one `Box` per shape that is at least `MIN_VISIBLE_FRACTION`
    visible. Shapes are drawn in order, so a later shape may hide part of an earlier one; an
    owner map records which shape painted each pixel last, which is how visibility is measured.
    A partly hidden shape keeps the box of its whole outline (the extent an annotator would draw).
    Sizes default to random sides in [MIN_SIDE, MAX_SIDE] so portrait, landscape and square
    images all occur. Shapes lie fully inside the image, so no box is clipped.
    """
    w = int(width) if width is not None else int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    h = int(height) if height is not None else int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int16)
    drawn: list[tuple[int, np.ndarray, tuple[int, int, int, int]]] = []

    n = 0 if rng.random() < 0.03 else int(rng.integers(1, max_shapes + 1))
    lo = max(MIN_SIZE_PX, MIN_SIZE_OF_LONG_SIDE * max(h, w))
    hi = max(lo * 1.2, MAX_SIZE_OF_SHORT_SIDE * min(h, w))
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(n):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        size = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        size = min(size, min(h, w) - 4.0)
        filled = rng.random() < 0.6
        thickness = -1 if filled else int(rng.integers(2, max(3, int(size / 10)) + 1))
        poly = None if cls == CIRCLE else _shape_polygon(rng, cls, size)
        if poly is None:
            half_w = half_h = size / 2
        else:
            half_w, half_h = (poly.max(0) - poly.min(0)) / 2
        margin = 1 + max(thickness, 0) / 2
        cx = rng.uniform(half_w + margin, max(w - half_w - margin, half_w + margin + 1e-3))
        cy = rng.uniform(half_h + margin, max(h - half_h - margin, half_h + margin + 1e-3))

        mask[:] = 0
        _draw_shape(img, mask, cls, (cx, cy), size, poly, (0, 0, 0), thickness, antialias=False)
        ys, xs = np.nonzero(mask)
        if len(xs) < 12:
            continue
        colour = _pick_colour(rng, img, mask)
        _draw_shape(img, mask, cls, (cx, cy), size, poly, colour, thickness, antialias=True)
        idx = len(drawn)
        owner[mask > 0] = idx
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        drawn.append((cls, np.count_nonzero(mask), box))

    boxes: list[Box] = []
    if drawn:
        visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(drawn))
        for i, (cls, area, (x1, y1, x2, y2)) in enumerate(drawn):
            if visible[i] >= MIN_VISIBLE_FRACTION * area:
                boxes.append(Box(cls, float(x1), float(y1), float(x2), float(y2)))

    sigma = rng.uniform(0, 8)
    if sigma > 1:  # sensor-like noise over everything, shapes included
        img = np.clip(img + rng.normal(0, sigma, size=img.shape), 0, 255).astype(np.uint8)
    return img, boxes


# --------------------------------------------------------------------------------------------------
# Data set on disk


def yolo_label_lines(boxes: list[Box], width: int, height: int) -> list[str]:
    """`class cx cy w h` rows, normalised to the image, as Ultralytics' label files hold them."""
    rows = []
    for b in boxes:
        cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
        bw, bh = (b.x2 - b.x1) / width, (b.y2 - b.y1) / height
        rows.append(f"{b.cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    return rows


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image `index` of the split seeded `seed`.

    Seeding per image (rather than drawing a whole split from one stream) makes image `i`
    independent of how many images the split has, so regrowing with a different count only adds
    or removes images at the end.
    """
    return np.random.default_rng([seed, index])


def generate_split(out_dir: Path, split: str, count: int, seed: int) -> None:
    """Write `count` images and label files of one split under `out_dir`, replacing any old ones.

    Old files are removed first, together with Ultralytics' `labels/<split>.cache`, because a
    stale cache would silently pair new images with old labels.
    """
    out_dir = Path(out_dir)
    img_dir, lbl_dir = out_dir / "images" / split, out_dir / "labels" / split
    for d in (img_dir, lbl_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    (out_dir / "labels" / f"{split}.cache").unlink(missing_ok=True)
    for i in range(count):
        img, boxes = render_image(image_rng(seed, i))
        stem = f"{split}_{i:05d}"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {stem}")
        (img_dir / f"{stem}.jpg").write_bytes(buf.tobytes())
        lines = yolo_label_lines(boxes, img.shape[1], img.shape[0])
        (lbl_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))


def _data_yaml(root: Path) -> str:
    # `path` is written absolute: Ultralytics resolves a relative one against its own datasets
    # directory, not against the YAML, so a relative path would break as soon as cwd changes.
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    return f"path: {root.resolve().as_posix()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"


def _stamp(train: int, val: int, train_seed: int, val_seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "train": train,
        "val": val,
        "train_seed": train_seed,
        "val_seed": val_seed,
    }


def write_dataset(root: Path, train: int, val: int, train_seed: int, val_seed: int) -> Path:
    """Write both splits and the data YAML under `root`; returns the YAML path.

    The seeds must differ, otherwise val would repeat the first train images and measure recall
    of memorised pictures instead of detection.
    """
    if train_seed == val_seed:
        raise ValueError("train_seed and val_seed must differ so the splits share no image")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    generate_split(root, "train", train, train_seed)
    generate_split(root, "val", val, val_seed)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(_data_yaml(root))
    (root / STAMP_NAME).write_text(json.dumps(_stamp(train, val, train_seed, val_seed), indent=2) + "\n")
    return yaml_path


def ensure_dataset(root: Path, train: int, val: int, train_seed: int, val_seed: int) -> Path:
    """Like `write_dataset`, but reuse what is on disk when it was made with the same parameters.

    Generation is deterministic, so a matching stamp (and the expected file counts) means the
    files are exactly what would be written again.
    """
    root = Path(root)
    stamp_path, yaml_path = root / STAMP_NAME, root / "data.yaml"
    try:
        same = json.loads(stamp_path.read_text()) == _stamp(train, val, train_seed, val_seed)
    except (OSError, ValueError):
        same = False
    if same and yaml_path.exists():
        counts = {s: len(list((root / "images" / s).glob("*.jpg"))) for s in ("train", "val")}
        if counts == {"train": train, "val": val}:
            yaml_path.write_text(_data_yaml(root))  # the tree may have moved since
            return yaml_path
    return write_dataset(root, train, val, train_seed, val_seed)
