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
from yolo_triton.perf import metrics, stages, tables
from yolo_triton.perf.probe import Probe
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
        v = server.plan.alias
        with DetectorClient(server.url) as client:
            probe = Probe(client, metrics.for_grpc(server.url, server.ports.metrics), [v.ensemble])
            probe.start()
            rc = detect.main(["--url", server.url, "--json", str(args.out / "detections.json"),
                              "--save-dir", str(args.out), *args.inputs])
            window = probe.stop()
        # A fused alias's stages come from its own stage metrics, a staged one's from its three models.
        rows = stages.rows(v, window.times, window.splits, "Triton statistics")
        print(f"\nper-stage server time (mean per request, ms; yolov8n = {v.ensemble}):")
        print(tables.markdown_table(rows, ["stage", "composing_model", "requests", "batch", "queue_ms", "total_ms"], 3)
              if rows else "  (no requests counted)")
        print(f"\ndemo: annotated images and detections.json in {args.out}")
        return rc
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
