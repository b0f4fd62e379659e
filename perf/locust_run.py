"""A headless Locust load test of the served ensemble over gRPC, with the server's view of it.

    python perf/locust_run.py [--users 4] [--spawn-rate 2] [--duration 60] [--url HOST:PORT] [--model yolov8n]

Runs perf/locustfile.py (real photos, default thresholds), keeps Locust's CSV and HTML report,
and snapshots Triton's per-model statistics before and after, so the report can say what share
of the latency under this load each stage (preprocess, detector, postprocess) took and how much
was queueing. Exits non-zero when the failure ratio exceeds --max-failure-ratio (default 0).

Without --url a tritonserver is started on free ports for the duration. Results:
runs/locust/<timestamp>/{locust_stats.csv, locust.html, stages.csv, stages.md, summary.md, meta.json}.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from yolo_triton import spec  # noqa: E402
from yolo_triton.client.detector import DetectorClient, ServerError  # noqa: E402
from yolo_triton.perf import stats  # noqa: E402
from yolo_triton.perf import tools as pt  # noqa: E402
from yolo_triton.pipeline.validation import InputError  # noqa: E402
from yolo_triton.serve.launcher import LaunchError  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
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


def positive(kind: type):  # noqa: ANN201 - argparse type factory
    def parse(text: str):  # noqa: ANN202
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number expected, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value

    return parse


def request_ns(stats_json: dict, model: str) -> tuple[int, int]:
    """(successful requests, their total ns inside the server) for one model.

    For an ensemble Triton's compute phases only add up the steps' compute, leaving out their
    queues and the scheduling between steps; the success duration is the whole stay in the server."""
    for m in stats_json.get("model_stats", []):
        if m.get("name") == model:
            ok = m.get("inference_stats", {}).get("success", {})
            return int(ok.get("count", 0)), int(ok.get("ns", 0))
    return 0, 0


def stage_rows(before: dict, after: dict, model: str, variant: spec.Variant, client_avg_ms: float) -> list[dict]:
    """Per-stage server time under the load, and each one's share of the client's mean latency.

    `before`/`after` are raw statistics JSON. The rows add up to the client's mean: the three
    models (queue + compute), the rest of the request's time inside the server (ensemble
    scheduling, tensor hand-over between steps), and the time outside the server (gRPC transfer
    and (de)serialisation of the photo, the client itself)."""
    steps = variant.stages or {variant.pipeline: "pipeline"}  # a fused variant: one model does all three
    snap_before, snap_after = stats.snapshot(before), stats.snapshot(after)
    rows = []
    for st in stats.diff(snap_before, snap_after, list(steps)):
        rows.append({"stage": steps[st.model], "model": st.model, "requests": st.count,
                     "batch": st.count / st.executions if st.executions else 0.0,
                     **{f"{p}_ms": st.ms[p] for p in stats.PHASES}, "total_ms": st.total_ms})
    inside = sum(r["total_ms"] for r in rows)
    (n1, ns1), (n0, ns0) = request_ns(after, model), request_ns(before, model)
    server_ms = (ns1 - ns0) / (n1 - n0) / 1e6 if n1 > n0 else 0.0
    if server_ms:
        rows.append({"stage": "ensemble scheduling", "model": model, "requests": n1 - n0,
                     "total_ms": max(server_ms - inside, 0.0)})
    if client_avg_ms > 0:
        rows.append({"stage": "outside the server", "model": "gRPC + client",
                     "total_ms": max(client_avg_ms - max(server_ms, inside), 0.0)})
        for r in rows:
            r["share_of_client_pct"] = 100.0 * r["total_ms"] / client_avg_ms
        rows.append({"stage": "client mean latency", "model": "locust", "total_ms": client_avg_ms,
                     "share_of_client_pct": 100.0})
    return rows


def aggregated(stats_csv: Path) -> dict:
    rows = pt.read_csv(stats_csv) if stats_csv.exists() else []
    for r in rows:
        if r.get("Name") == "Aggregated":
            return r
    return {}


def summary(agg: dict, stages: list[dict], meta: dict) -> str:
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
        pt.markdown_table(stages, ["stage", "model", "requests", "batch", "queue_ms", "compute_input_ms",
                                   "compute_infer_ms", "compute_output_ms", "total_ms", "share_of_client_pct"], 1),
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
    pt.add_target_args(ap, "locust", "2 users for 8 s (tests, smoke checks)")
    args = ap.parse_args(argv)
    users = args.users or (2 if args.quick else 4)
    spawn = args.spawn_rate or 2.0
    duration = args.duration or (8 if args.quick else 60)

    try:
        samples = pt.sample_images(args.images)
    except (pt.PerfToolError, InputError) as e:
        print(f"locust: {e}", file=sys.stderr)
        return 2
    out = pt.run_dir("locust", args.runs_dir)
    print(f"locust: results -> {out}", flush=True)
    try:
        with pt.target(args.url, args.repo, out / "tritonserver.log", "locust") as tgt:
            url = tgt.url
            server = pt.server_info(tgt)
            loaded = [*server["variants"], spec.ALIAS]
            if args.model not in loaded:
                print(f"locust: {args.model} is not loaded on {url}; loaded: {', '.join(loaded)}", file=sys.stderr)
                return 2
            target = server.get("alias") if args.model == spec.ALIAS else args.model
            variant = pt.variant_of(target or "")
            if variant is None:
                print(f"locust: cannot tell which variant {args.model} runs", file=sys.stderr)
                return 2
            with DetectorClient(url, model=args.model, timeout_s=120) as client:
                print(f"locust: {args.model}: warming up ({len(samples)} photos)", flush=True)
                for s in samples:
                    client.detect(s.image)
                before = client.model_stats()
                cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
                       "-r", f"{spawn:g}", "-t", f"{duration}s", "--stop-timeout", str(STOP_TIMEOUT_S),
                       "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust.html"),
                       "--triton-url", url, "--triton-model", args.model, "--think-time", f"{args.think_time:g}",
                       "--exit-code-on-error", "0"]
                if args.images:
                    cmd += ["--triton-images", ",".join(args.images)]
                print(f"locust: {users} users (spawn {spawn:g}/s) for {duration}s against {args.model} on {url}",
                      flush=True)
                rc = _tee(cmd, out / "locust.log", duration + STOP_TIMEOUT_S + 120)
                after = client.model_stats()
    except (LaunchError, pt.PerfToolError, ServerError, InputError) as e:
        print(f"locust: {e}", file=sys.stderr)
        return 2

    agg = aggregated(out / "locust_stats.csv")
    if not agg:
        print(f"locust: Locust exited {rc} without a report (log: {out / 'locust.log'})", file=sys.stderr)
        return 1
    if rc != 0:
        print(f"locust: warning: Locust exited {rc} after writing its report (log: {out / 'locust.log'})",
              flush=True)
    reqs, fails = int(agg["Request Count"]), int(agg["Failure Count"])
    stages = stage_rows(before, after, args.model, variant, float(agg["Average Response Time"]))
    pt.write_csv(out / "stages.csv", stages, STAGE_COLUMNS)
    meta = {"model": args.model, "variant": variant.ensemble, "server": server,
            "images": [(s.name, s.size) for s in samples],
            "settings": {"users": users, "spawn_rate": spawn, "duration_s": duration, "think_time": args.think_time,
                         "max_failure_ratio": args.max_failure_ratio, "quick": args.quick},
            "locust_command": " ".join(cmd), "requests": reqs, "failures": fails}
    text = summary(agg, stages, meta)
    (out / "stages.md").write_text("## " + text.split("\n## ", 1)[1])
    (out / "summary.md").write_text(text)
    pt.write_meta(out, "locust", meta)
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


def _tee(cmd: list[str], log: Path, limit_s: float) -> int:
    """Run Locust, showing its periodic stats as they come and keeping them in a log.

    A watchdog ends a Locust that outlives its run by far (a process stuck on exit after its
    reports are written is not a failed test; one stuck before is)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with log.open("w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              env=env, cwd=ROOT) as proc:
        watchdog = threading.Timer(limit_s, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                f.write(line)
            rc = proc.wait()
        finally:
            watchdog.cancel()
    if rc < 0 and time.monotonic() - start >= limit_s:
        print(f"locust: Locust still running {limit_s:.0f}s after start: stopped it", flush=True)
    print(f"locust: Locust finished in {time.monotonic() - start:.0f}s (exit {rc})", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
