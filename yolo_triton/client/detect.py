"""Detect objects in images through the Triton ensemble over gRPC.

    yolo-triton detect [--url HOST:PORT] [--model NAME] [--conf X] [--iou X]
                             [--json FILE] [--save-dir DIR] INPUT...

INPUT: image files, folders of images, or video files (one result per frame).
Prints one line per image; boxes are in original-image pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2

from yolo_triton import spec
from yolo_triton.client import images
from yolo_triton.client.detector import DetectorClient, ServerError, detections_json
from yolo_triton.client.draw import annotate
from yolo_triton.pipeline.validation import InputError


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
    args = ap.parse_args(argv)

    results, failures = [], 0
    try:
        paths = images.expand(args.inputs)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with DetectorClient(args.url, args.model, timeout_s=args.timeout) as client:
        try:
            names = client.names
        except ServerError as e:
            print(f"error: cannot reach model {args.model!r} at {args.url}: {e}", file=sys.stderr)
            return 2
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            try:
                for name, image in images.frames(path):
                    r = client.detect(image, args.conf, args.iou, args.max_det)
                    dets = detections_json(r.detections, names)
                    h, w = image.shape[:2]
                    summary = ", ".join(f"{d['class_name']} {d['score']:.2f}" for d in dets[:8])
                    more = f" (+{len(dets) - 8} more)" if len(dets) > 8 else ""
                    print(f"{name}: {w}x{h}, {len(dets)} detections [{summary}{more}] {r.latency_ms:.1f} ms",
                          flush=True)
                    results.append({"image": name, "width": w, "height": h, "detections": dets,
                                    "latency_ms": round(r.latency_ms, 3)})
                    if args.save_dir:
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
