"""Detect objects in images through the Triton ensemble over gRPC.

    yolo-triton detect [--url HOST:PORT] [--model NAME] [--conf X] [--iou X]
                             [--transport auto|encoded|pixels|shm] [--json FILE] [--save-dir DIR] INPUT...

INPUT: image files, folders of images, or video files (one result per frame).
Prints one line per image; boxes are in original-image pixels (after EXIF orientation).
--transport auto (default): a remote server gets a JPEG/PNG/WebP file's own bytes, decoded there;
a server on this host gets pixels. Video frames are pixels unless --transport encoded (JPEG).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from yolo_triton import spec
from yolo_triton.client import images, transport
from yolo_triton.client.detector import DetectorClient, Result, ServerError, detections_json
from yolo_triton.client.draw import annotate
from yolo_triton.pipeline import encoded
from yolo_triton.pipeline.validation import InputError


def requests(client: DetectorClient, path: Path, how: str, args: argparse.Namespace, need_pixels: bool
             ) -> Iterator[tuple[str, int, int, Result, np.ndarray | None]]:
    """(name, width, height, result, pixels or None) for each image of `path`, sent as `how` says
    (transport.choose); pixels are decoded here only when sent or drawn on."""
    options = (args.conf, args.iou, args.max_det)
    if path.suffix.lower() in images.VIDEO_SUFFIXES:
        if how == "encoded":
            print(f"{path}: video frames have no file of their own; sending each as JPEG "
                  f"(quality {transport.FRAME_JPEG_QUALITY}) as --transport encoded asks", file=sys.stderr)
        for name, frame in images.frames(path):
            r = (client.detect_encoded(transport.encode_frame(frame), *options) if how == "encoded"
                 else client.detect(frame, *options))
            yield name, frame.shape[1], frame.shape[0], r, frame
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    chosen = transport.choose(how, args.url, data)
    if chosen == "encoded":
        if not transport.is_encoded(data):
            raise InputError(f"{path}: not JPEG, PNG or WebP; --transport encoded sends files as they are")
        h, w = encoded.oriented_shape(encoded.read_header(data, 0))
        pixels = images.decode(data, str(path)) if need_pixels else None
        yield str(path), w, h, client.detect_encoded(data, *options), pixels
        return
    image = images.decode(data, str(path))
    yield str(path), image.shape[1], image.shape[0], client.detect(image, *options), image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT")
    ap.add_argument("--url", default="127.0.0.1:8001")
    ap.add_argument("--model", default=spec.ALIAS)
    ap.add_argument("--conf", type=float, default=None,
                    help=f"confidence threshold (server default {spec.DEFAULT_CONF})")
    ap.add_argument("--iou", type=float, default=None, help=f"NMS IoU threshold (server default {spec.DEFAULT_IOU})")
    ap.add_argument("--max-det", type=int, default=None, help=f"max detections (server default {spec.DEFAULT_MAX_DET})")
    ap.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    ap.add_argument("--save-dir", type=Path, default=None, help="write annotated images here")
    ap.add_argument("--timeout", type=float, default=30.0, help="deadline per request, seconds")
    ap.add_argument("--transport", choices=transport.TRANSPORTS, default="auto",
                    help="encoded: send files' own bytes; pixels: decoded pixels in the message; shm: pixels "
                         "through shared memory (same host); auto: encoded for a remote server, pixels on this host")
    args = ap.parse_args(argv)

    results, failures = [], 0
    try:
        paths = images.expand(args.inputs)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with DetectorClient(args.url, args.model, timeout_s=args.timeout, shared_memory=args.transport == "shm") as client:
        try:
            names = client.names
        except ServerError as e:
            print(f"error: cannot reach model {args.model!r} at {args.url}: {e}", file=sys.stderr)
            return 2
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            try:
                for name, w, h, r, image in requests(client, path, args.transport, args, bool(args.save_dir)):
                    dets = detections_json(r.detections, names)
                    summary = ", ".join(f"{d['class_name']} {d['score']:.2f}" for d in dets[:8])
                    more = f" (+{len(dets) - 8} more)" if len(dets) > 8 else ""
                    print(f"{name}: {w}x{h}, {len(dets)} detections [{summary}{more}] {r.latency_ms:.1f} ms",
                          flush=True)
                    results.append({"image": name, "width": w, "height": h, "detections": dets,
                                    "latency_ms": round(r.latency_ms, 3)})
                    if args.save_dir and image is not None:
                        out = args.save_dir / (Path(name.replace("#", "_")).stem + ".jpg")
                        cv2.imwrite(str(out), annotate(image, r.detections, names))
            except (InputError, ServerError) as e:
                failures += 1
                print(f"{path}: error: {e}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
