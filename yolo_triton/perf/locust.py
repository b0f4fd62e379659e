"""A headless Locust load test of the served ensemble over gRPC, with the server's view of it.

    yolo-triton locust [--users 4] [--spawn-rate 2] [--duration 60] [--url HOST:PORT] [--model yolov8n]

Runs perf/locustfile.py (real photos, default thresholds), keeps Locust's CSV and HTML report,
and snapshots Triton's per-model statistics (and a fused model's stage metrics) before and after,
so the report can say what share of the latency under this load each stage (preprocess,
detector, postprocess) took and how much was queueing. Exits non-zero when the failure ratio
exceeds --max-failure-ratio (default 0).

Without --url a tritonserver is started on free ports for the duration. Results:
runs/locust/<timestamp>/{locust_stats.csv, locust.html, stages.csv, stages.md, summary.md, meta.json}.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.perf import inputs, locust_process, stages
from yolo_triton.perf import target as tg
from yolo_triton.perf.errors import PerfToolError
from yolo_triton.perf.probe import Probe, Window
from yolo_triton.perf.runs import run_dir, write_meta
from yolo_triton.perf.tables import aggregated, markdown_table, write_csv

STOP_TIMEOUT_S = 60  # users finish their request in flight at the end, so none is cut off mid-way
STAGE_COLUMNS = ["stage", "model", "requests", "batch", "queue_ms", "compute_input_ms", "compute_infer_ms",
                 "compute_output_ms", "total_ms", "share_of_client_pct"]


def duration_arg(text: str) -> int:
    """Seconds, or Locust's style (90s, 2m, 1h30m)."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text)
    else:
        parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
        if not parts or not any(parts.groups()):
            raise argparse.ArgumentTypeError(f"duration like 60, 90s or 2m expected, got {text!r}")
        h, m, s = (int(g or 0) for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return seconds


def positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number expected, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def stage_rows(window: Window, model: str, variant: spec.Variant, client_avg_ms: float) -> list[dict]:
    """Per-stage server time under the load, and each one's share of the client's mean latency.

    The rows add up to the client's mean: the stages (queue + compute), the rest of the request's
    time inside the server (ensemble scheduling, tensor hand-over between steps), and the time
    outside the server (gRPC transfer and (de)serialisation of the photo, the client itself).
    For an ensemble Triton's compute phases only add up the steps' compute, leaving out their
    queues and the scheduling between steps; its success duration is the whole stay in the server."""
    rows = [{**r, "model": r["composing_model"]}
            for r in stages.rows(variant, window.times, window.splits, "triton_statistics")]
    inside = sum(r["total_ms"] for r in rows)
    ensemble = window.times.get(model)
    server_ms = ensemble.request_ms if ensemble else 0.0
    if server_ms:
        rows.append({"stage": "ensemble scheduling", "model": model, "requests": ensemble.count,
                     "total_ms": max(server_ms - inside, 0.0)})
    if client_avg_ms > 0:
        rows.append({"stage": "outside the server", "model": "gRPC + client",
                     "total_ms": max(client_avg_ms - max(server_ms, inside), 0.0)})
        for r in rows:
            r["share_of_client_pct"] = 100.0 * r["total_ms"] / client_avg_ms
        rows.append({"stage": "client mean latency", "model": "locust", "total_ms": client_avg_ms,
                     "share_of_client_pct": 100.0})
    return rows


def summary(agg: dict, rows: list[dict], meta: dict) -> str:
    reqs, fails = int(agg.get("Request Count", 0)), int(agg.get("Failure Count", 0))
    s = meta["settings"]
    out = [
        "# Locust load test", "",
        f"- target: `{meta['model']}` on tritonserver {meta['server'].get('tritonserver')} at {meta['server']['url']}"
        + (f" (`{spec.ALIAS}` -> `{meta['server']['alias']}`)" if meta['server'].get("alias") else ""),
        f"- load: {s['users']} users, spawn rate {s['spawn_rate']}/s, {s['duration_s']} s, think time "
        f"{s['think_time']} s, photos: {', '.join(n for n, _ in meta['images'])}",
        f"- requests: {reqs}, failures: {fails} ({100.0 * fails / reqs if reqs else 0.0:.2f}%), "
        f"{float(agg.get('Requests/s', 0.0)):.2f} req/s",
        f"- latency (ms): mean {float(agg.get('Average Response Time', 0.0)):.1f}, "
        + ", ".join(f"p{p} {float(agg.get(f'{p}%', 0.0)):.0f}" for p in (50, 90, 95, 99))
        + f", max {float(agg.get('Max Response Time', 0.0)):.0f}",
        "- report: locust.html; Locust CSVs: locust_stats.csv, locust_failures.csv, locust_stats_history.csv",
        "", "## Where the time goes under this load (mean ms per request, from Triton's statistics)", "",
        markdown_table(rows, STAGE_COLUMNS, 1),
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=positive(int), help="simulated users (default 4; --quick: 2)")
    ap.add_argument("--spawn-rate", type=positive(float), help="users started per second (default 2)")
    ap.add_argument("--duration", type=duration_arg, help="seconds or 90s/2m (default 60; --quick: 8)")
    ap.add_argument("--think-time", type=float, default=0.0, help="pause between a user's requests, seconds")
    ap.add_argument("--model", default=spec.ALIAS, help=f"ensemble to load (default {spec.ALIAS})")
    ap.add_argument("--max-failure-ratio", type=float, default=0.0, help="exit 1 above this failure ratio")
    tg.add_target_args(ap, "locust", "2 users for 8 s (tests, smoke checks)")
    args = ap.parse_args(argv)
    args.users = args.users or (2 if args.quick else 4)
    args.spawn_rate = args.spawn_rate or 2.0
    args.duration = args.duration or (8 if args.quick else 60)
    return tg.reported("locust", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    samples = inputs.photos(args.images)
    out = run_dir("locust", args.runs_dir)
    print(f"locust: results -> {out}", flush=True)
    with tg.target(args.url, args.repo, out / "tritonserver.log", "locust", args.metrics_url) as tgt:
        server = tg.server_info(tgt)
        models = tg.choose(server, args.model)
        if len(models) != 1:
            raise PerfToolError(f"--model names one ensemble, got {args.model!r}")
        model = models[0]
        variant = tg.variant_of(model, server.get("alias"))
        if variant is None:
            raise PerfToolError(f"cannot tell which variant {model} runs")
        print(f"locust: {model}: warming up ({len(samples)} photos)", flush=True)
        tg.warm_up(tgt.url, model, samples)
        cmd = locust_process.command(out / "locust", tgt.url, model, args.users, args.spawn_rate, args.duration,
                                     STOP_TIMEOUT_S, "--csv-full-history", "--html", str(out / "locust.html"),
                                     "--think-time", f"{args.think_time:g}")
        if args.images:
            cmd += ["--triton-images", ",".join(args.images)]
        print(f"locust: {args.users} users (spawn {args.spawn_rate:g}/s) for {args.duration}s against {model} on "
              f"{tgt.url}", flush=True)
        with DetectorClient(tgt.url, model=model, timeout_s=120) as client:
            probe = Probe(client, tgt.metrics_url, [variant.ensemble])
            probe.start()
            rc = locust_process.run(cmd, out / "locust.log", args.duration + STOP_TIMEOUT_S + 120, "locust")
            window = probe.stop()

    agg = aggregated(out / "locust_stats.csv")
    if not agg:
        print(f"locust: Locust exited {rc} without a report (log: {out / 'locust.log'})", file=sys.stderr)
        return 1
    if rc != 0:
        print(f"locust: warning: Locust exited {rc} after writing its report (log: {out / 'locust.log'})",
              flush=True)
    reqs, fails = int(agg["Request Count"]), int(agg["Failure Count"])
    rows = stage_rows(window, model, variant, float(agg["Average Response Time"]))
    write_csv(out / "stages.csv", rows, STAGE_COLUMNS)
    meta = {"model": model, "variant": variant.ensemble, "server": server,
            "images": [(s.name, s.size) for s in samples],
            "settings": {"users": args.users, "spawn_rate": args.spawn_rate, "duration_s": args.duration,
                         "think_time": args.think_time, "max_failure_ratio": args.max_failure_ratio,
                         "quick": args.quick},
            "locust_command": " ".join(cmd), "requests": reqs, "failures": fails}
    text = summary(agg, rows, meta)
    (out / "stages.md").write_text("## " + text.split("\n## ", 1)[1])
    (out / "summary.md").write_text(text)
    write_meta(out, "locust", meta)
    print("\n" + text, flush=True)
    ratio = fails / reqs if reqs else 1.0
    if reqs == 0:
        print("locust: no request completed", file=sys.stderr)
        return 1
    if ratio > args.max_failure_ratio:
        print(f"locust: failure ratio {ratio:.3f} above --max-failure-ratio {args.max_failure_ratio:g} "
              f"(see {out / 'locust_failures.csv'})", file=sys.stderr)
        return 1
    print(f"locust: {reqs} requests, {fails} failures; report in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
