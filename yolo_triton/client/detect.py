"""Detect objects in images through the Triton ensemble over gRPC.

    yolo-triton detect [--url HOST:PORT] [--model NAME] [--conf X] [--iou X]
                             [--transport auto|encoded|pixels|shm] [--json FILE]
                             [--save-dir DIR [--save-video]] INPUT...

INPUT: image files, folders of images, or video files (one result per frame).
Prints one line per image; boxes are in original-image pixels (after EXIF orientation). A missing
path, an empty folder or an unreadable file is reported and skipped (exit 1 at the end); nothing
to read at all, or a server that cannot be reached, ends the run at once (exit 2). Every error
line names the fix.
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
from yolo_triton.client import endpoint, images, saving, transport
from yolo_triton.client.detector import DetectorClient, Result, ServerError, detections_json
from yolo_triton.client.draw import annotate
from yolo_triton.pipeline import encoded
from yolo_triton.pipeline.validation import InputError

Sent = tuple[str, int, int, Result, np.ndarray | None, int | None]


def requests(client: DetectorClient, path: Path, how: str, address: str, args: argparse.Namespace,
             need_pixels: bool) -> Iterator[Sent]:
    """(name, width, height, result, pixels or None, frame index or None) for each image of `path`,
    sent as `how` says (transport.choose); pixels are decoded here only when sent or drawn on."""
    options = (args.conf, args.iou, args.max_det)
    if images.is_video(path):
        if how == "encoded":
            print(f"{path}: video frames have no file of their own; sending each as JPEG "
                  f"(quality {transport.FRAME_JPEG_QUALITY}) as --transport encoded asks", file=sys.stderr)
        for name, frame, index in images.frames(path):
            r = (client.detect_encoded(transport.encode_frame(frame), *options) if how == "encoded"
                 else client.detect(frame, *options))
            yield name, frame.shape[1], frame.shape[0], r, frame, index
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}): check the path and its permissions") from None
    chosen = transport.choose(how, address, data)
    if chosen == "encoded":
        if not transport.is_encoded(data):
            raise InputError(f"{path}: not JPEG, PNG or WebP; --transport encoded sends files as they are: "
                             "use --transport pixels for other formats")
        try:  # the server's own header checks, here before the file is sent
            h, w = encoded.oriented_shape(encoded.read_header(data, 0))
        except encoded.EncodedImageError as e:
            raise InputError(f"{path}: {e.why}") from None
        pixels = images.decode(data, str(path)) if need_pixels else None
        yield str(path), w, h, client.detect_encoded(data, *options), pixels, None
        return
    image = images.decode(data, str(path))
    yield str(path), image.shape[1], image.shape[0], client.detect(image, *options), image, None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT")
    ap.add_argument("--url", default=f"127.0.0.1:{endpoint.DEFAULT_GRPC_PORT}",
                    help="the server's gRPC endpoint: HOST:PORT or grpc://HOST:PORT[/MODEL]")
    ap.add_argument("--model", default=None, help=f"served ensemble (default: the URL's, else {spec.ALIAS})")
    ap.add_argument("--conf", type=float, default=None,
                    help=f"confidence threshold (server default {spec.DEFAULT_CONF})")
    ap.add_argument("--iou", type=float, default=None, help=f"NMS IoU threshold (server default {spec.DEFAULT_IOU})")
    ap.add_argument("--max-det", type=int, default=None, help=f"max detections (server default {spec.DEFAULT_MAX_DET})")
    ap.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    ap.add_argument("--save-dir", type=Path, default=None,
                    help="write annotated images here (video frames as <stem>_<frame>.jpg)")
    ap.add_argument("--save-video", action="store_true",
                    help="with --save-dir, also write each video annotated as <stem>_annotated.mp4")
    ap.add_argument("--timeout", type=float, default=30.0, help="deadline per request, seconds")
    ap.add_argument("--transport", choices=transport.TRANSPORTS, default="auto",
                    help="encoded: send files' own bytes; pixels: decoded pixels in the message; shm: pixels "
                         "through shared memory (same host); auto: encoded for a remote server, pixels on this host")
    return ap


def _unreachable(client: DetectorClient, e: ServerError) -> str:
    """Why the model cannot be used, with the fix."""
    message = str(e)
    if endpoint.looks_like_wrong_port(message):
        return endpoint.wrong_port_hint(client.url)
    if e.status == "StatusCode.NOT_FOUND" or "unknown model" in message.lower():
        try:
            ready = client.ready_models()
        except ServerError:
            ready = []
        return (f"no model {client.model!r} at {client.url}; ready there: {', '.join(ready) or '(none)'}: "
                "pass one of them with --model")
    return f"cannot reach model {client.model!r} at {client.url}: {message}"


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.save_video and not args.save_dir:
        ap.error("--save-video needs --save-dir (where the video goes)")
    try:
        target = endpoint.parse(args.url)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths, problems = images.expand_each(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not paths:
        print("error: nothing to detect on: give image files, video files or folders holding them", file=sys.stderr)
        return 2
    results, failures = [], len(problems)
    model = args.model or target.model or spec.ALIAS
    with DetectorClient(target.address, model, timeout_s=args.timeout, shared_memory=args.transport == "shm") as client:
        try:
            names = client.names
        except ServerError as e:
            print(f"error: {_unreachable(client, e)}", file=sys.stderr)
            return 2
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            video = saving.video_for(args.save_dir, path, args.save_video)
            try:
                for name, w, h, r, image, index in requests(client, path, args.transport, target.address, args,
                                                             bool(args.save_dir)):
                    dets = detections_json(r.detections, names)
                    summary = ", ".join(f"{d['class_name']} {d['score']:.2f}" for d in dets[:8])
                    more = f" (+{len(dets) - 8} more)" if len(dets) > 8 else ""
                    print(f"{name}: {w}x{h}, {len(dets)} detections [{summary}{more}] {r.latency_ms:.1f} ms",
                          flush=True)
                    results.append({"image": name, "width": w, "height": h, "detections": dets,
                                    "latency_ms": round(r.latency_ms, 3)})
                    if args.save_dir and image is not None:
                        annotated = annotate(image, r.detections, names)
                        cv2.imwrite(str(saving.frame_path(args.save_dir, path, index)), annotated)
                        if video is not None:
                            video.write(annotated)
            except InputError as e:  # its message names the file
                failures += 1
                print(f"error: {e}", file=sys.stderr)
            except ServerError as e:
                failures += 1
                print(f"error: {path}: {e}", file=sys.stderr)
            finally:
                if video is not None:
                    video.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
