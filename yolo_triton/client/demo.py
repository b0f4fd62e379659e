"""The main job end to end: start the server, detect on the sample images, show where time goes.

    yolo-triton demo [--inputs assets/samples] [--out runs/demo]

Starts tritonserver on free local ports, runs `yolo-triton detect`'s logic over the inputs
(annotated images and detections.json into --out), prints the per-stage server time from
Triton's statistics, and stops the server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_triton.client import detect
from yolo_triton.client.detector import DetectorClient
from yolo_triton.paths import RUNS, SAMPLES
from yolo_triton.perf import stats
from yolo_triton.serve.launcher import LaunchError, Server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", default=[str(SAMPLES)])
    ap.add_argument("--out", type=Path, default=RUNS / "demo")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    try:
        server = Server(log=args.out / "tritonserver.log")
        print(server.describe(), flush=True)
        server.start()
    except LaunchError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    try:
        print(f"demo: tritonserver ready on {server.url} ({', '.join(server.plan.load)})", flush=True)
        with DetectorClient(server.url) as client:
            before = stats.snapshot(client.model_stats())
            rc = detect.main(["--url", server.url, "--json", str(args.out / "detections.json"),
                              "--save-dir", str(args.out), *args.inputs])
            after = stats.snapshot(client.model_stats())
        v = server.plan.alias
        rows = stats.diff(before, after, [v.preprocess, v.detector, v.postprocess, "yolov8n"])
        print(f"\nper-stage server time (mean per request, ms; yolov8n = {v.ensemble}):")
        print(stats.table(rows))
        print(f"\ndemo: annotated images and detections.json in {args.out}")
        return rc
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
