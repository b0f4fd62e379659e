"""Soak test: Locust at about twice the saturated rate for a bounded time, the server's memory watched.

    yolo-triton soak [--duration 180] [--concurrency 8] [--url HOST:PORT [--server-pid PID]]
                     [--max-growth-mb 96] [--runs-dir runs]

1. Saturation: `--concurrency` requests of the sample photos in flight, back to back, for
   `--saturation-s` seconds (yolo_triton.perf.saturation); answered requests per second is the
   saturated rate R.
2. Soak: Locust runs perf/locustfile.py's user, paced by constant_throughput (--triton-rate) and
   checking every reply (--triton-classes, yolo_triton.perf.replies): 2 x concurrency users,
   each asking for R / concurrency requests per second, an offered load of 2R. A closed loop cannot
   push more than R through, so the server is held at saturation with a queue of 2 x concurrency
   requests, and each one's latency stays far below its deadline (--request-timeout). Every reply
   is checked: shapes and dtypes of the four outputs, NUM_DETECTIONS against the rows, boxes inside
   the image, scores in (0, 1], class ids known.
3. Memory: the proportional set size (PSS, shared pages split between processes, so the python
   stubs' shared memory is not counted twice) of tritonserver plus its stubs, every `--sample-s`.

No error is expected: the queue is bounded by the number of users, and deadlines are long. The run
fails (exit 1) on any failed or malformed request, on no request at all, or when the server's
memory grows by more than `--max-growth-mb` from the first to the last third of the judged window:
the server's pools are first grown to what this load can ask of them (prewarm()), and the first
`--warmup-frac` of the run is not judged. Results: runs/soak/<timestamp>/{summary.json, summary.md,
memory.csv, locust_*.csv, tritonserver.log}.
"""


from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.perf import inputs, locust_process
from yolo_triton.perf import target as tg
from yolo_triton.perf.memory import MemorySampler, find_server_pid, memory_figures
from yolo_triton.perf.runs import run_dir
from yolo_triton.perf.saturation import Rate, saturate
from yolo_triton.perf.tables import aggregated


def prewarm(url: str, model: str, images: list[np.ndarray], users: int) -> None:
    """Grow the server's pools to what the soak's load can ask of them, before memory is watched.

    With `users` single-image requests outstanding, no step ever sees more than `users` images at
    once: one request carrying that many copies of the largest photo, then as many concurrent
    single requests, take ONNX Runtime's arena, the python stubs' shared memory and the gRPC
    buffers to their high-water marks, so what grows afterwards is growth, not warm-up."""
    largest = max(images, key=lambda im: im.size)
    with DetectorClient(url, model, timeout_s=300) as client:
        client.infer(np.stack([largest] * min(users, spec.MAX_BATCH)))

    def one() -> None:
        with DetectorClient(url, model, timeout_s=300) as c:
            c.infer(largest[None])

    for _ in range(2):
        threads = [threading.Thread(target=one, daemon=True) for _ in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)


def failures_by_type(csv_path: Path) -> Counter:
    """Locust's failures CSV -> occurrences per kind (gRPC status name, 'malformed', or 'other')."""
    kinds: Counter = Counter()
    if not csv_path.exists():
        return kinds
    with csv_path.open() as f:
        for row in csv.DictReader(f):
            error, n = row.get("Error", ""), int(row.get("Occurrences", 0) or 0)
            if "Malformed(" in error:
                kinds["malformed"] += n
            elif m := re.search(r"GrpcError\('([A-Z_]+)", error):
                kinds[m.group(1)] += n
            else:
                kinds["other"] += n
    return kinds


def summary_markdown(s: dict) -> str:
    sat, mem, loc = s["saturation"], s.get("memory") or {}, s["locust"]
    lines = [
        "# Soak test", "",
        f"- target: `{s['model']}` at {s['url']}; {s['duration_s']} s; the CPU may be shared with other work",
        f"- saturated rate R: {sat['rate']:.2f} req/s ({sat['concurrency']} clients, {sat['seconds']:.0f} s)",
        f"- offered: {s['users']} Locust users x {s['rate_per_user']:.3f} req/s = {s['offered_rate']:.2f} req/s "
        f"({s['offered_rate'] / sat['rate'] if sat['rate'] else 0:.1f} x R, "
        f"{s['offered_over_achieved']:.1f} x the throughput achieved under it)",
        f"- requests: {loc['requests']}, failures: {loc['failures']} "
        f"({', '.join(f'{k} {v}' for k, v in s['failures_by_type'].items()) or 'none'}), "
        f"unexpected: {s['unexpected_errors']}, throughput {loc['rps']:.2f} req/s",
        f"- latency ms: median {loc['p50_ms']:.0f}, p95 {loc['p95_ms']:.0f}, max {loc['max_ms']:.0f}",
    ]
    if mem:
        lines.append(
            f"- server memory (PSS, tritonserver + stubs, {mem['samples']} samples): idle {mem['idle_mb']:.0f} MB, "
            f"start of the load {mem['start_mb']:.0f} MB, "
            f"after warm-up {mem['after_warmup_mb']:.0f} MB, end {mem['end_mb']:.0f} MB, peak {mem['peak_mb']:.0f} MB, "
            f"growth after warm-up {mem['growth_mb']:+.0f} MB (limit {s['max_growth_mb']:.0f} MB); "
            f"RSS start {mem['start_rss_mb']:.0f} MB, end {mem['end_rss_mb']:.0f} MB")
    else:
        lines.append("- server memory: not sampled (pass --server-pid with --url)")
    if 0 < s["offered_over_achieved"] < 1.5:
        lines.append(f"- note: the offered load was only {s['offered_over_achieved']:.1f} x the throughput achieved: "
                     "the CPU had more to give than during the saturation measurement (shared machine?)")
    lines += ["", f"verdict: {'PASS' if s['passed'] else 'FAIL: ' + '; '.join(s['problems'])}", ""]
    return "\n".join(lines)


def _locust(out: Path, url: str, args: argparse.Namespace, users: int, rate_per_user: float, num_classes: int) -> int:
    """The paced, checking Locust run (see the module's docstring); its exit status."""
    timeout = args.request_timeout
    cmd = locust_process.command(out / "locust", url, args.model, users, users, args.duration, timeout,
                                 "--only-summary", "--request-timeout", f"{timeout:g}",
                                 "--triton-rate", f"{rate_per_user:.4f}", "--triton-classes", str(num_classes))
    return locust_process.run(cmd, out / "locust.log", args.duration + timeout + 120, "soak", echo=False)


def _judge(out: Path, args: argparse.Namespace, url: str, sat: Rate, rc: int, users: int, rate_per_user: float,
           sampler: MemorySampler | None, idle_mb: float | None) -> dict:
    """The run's figures and verdict (summary.json), from Locust's CSVs and the memory samples."""
    agg = aggregated(out / "locust_stats.csv")
    kinds = failures_by_type(out / "locust_failures.csv")
    reqs, fails = int(agg.get("Request Count", 0) or 0), int(agg.get("Failure Count", 0) or 0)
    problems = []
    if rc != 0 or not agg:
        problems.append(f"Locust exited {rc} (log: {out / 'locust.log'})")
    if reqs == 0:
        problems.append("no request completed")
    unexpected = sum(kinds.values()) or fails  # no kind of error is expected (see the docstring)
    if unexpected:
        problems.append(f"{unexpected} unexpected errors: {dict(kinds)}")
    memory = None
    if sampler and len(sampler.samples) >= 3:
        memory = {**memory_figures(sampler.samples, args.warmup_frac * args.duration), "idle_mb": idle_mb}
        if memory["growth_mb"] > args.max_growth_mb:
            problems.append(f"server memory grew {memory['growth_mb']:.0f} MB after warm-up "
                            f"(limit {args.max_growth_mb:g} MB)")
        with (out / "memory.csv").open("w") as f:
            f.write("t_s,pss_mb,rss_mb,processes\n")
            f.writelines(f"{t:.1f},{p:.1f},{r:.1f},{n}\n" for t, p, r, n in sampler.samples)
    rps = float(agg.get("Requests/s", 0) or 0)
    saturation = {"concurrency": sat.in_flight, "seconds": sat.seconds, "requests": sat.requests,
                  "rate": sat.requests_per_s, "errors": sat.errors}
    return {
        "model": args.model, "url": url, "duration_s": args.duration, "users": users,
        "rate_per_user": rate_per_user, "offered_rate": rate_per_user * users, "saturation": saturation,
        "offered_over_achieved": rate_per_user * users / rps if rps else 0.0,
        "locust": {"requests": reqs, "failures": fails, "rps": rps,
                   "p50_ms": float(agg.get("50%", 0) or 0), "p95_ms": float(agg.get("95%", 0) or 0),
                   "max_ms": float(agg.get("Max Response Time", 0) or 0)},
        "failures_by_type": dict(kinds), "unexpected_errors": unexpected, "memory": memory,
        "max_growth_mb": args.max_growth_mb, "problems": problems, "passed": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    load = ap.add_argument_group("load")
    load.add_argument("--duration", type=int, default=180, help="seconds of Locust load (default 180)")
    load.add_argument("--concurrency", type=int, default=8, help="requests in flight for the saturation measurement")
    load.add_argument("--saturation-s", type=float, default=8.0, help="seconds of the saturation measurement")
    load.add_argument("--overload", type=float, default=2.0, help="offered load as a multiple of R (default 2)")
    load.add_argument("--request-timeout", type=float, default=120.0, help="deadline per request, seconds")
    load.add_argument("--model", default=spec.ALIAS)
    memory = ap.add_argument_group("memory")
    memory.add_argument("--sample-s", type=float, default=3.0, help="memory sampling interval, seconds")
    memory.add_argument("--warmup-frac", type=float, default=0.2, help="share of the run before memory must be flat")
    memory.add_argument("--max-growth-mb", type=float, default=96.0, help="allowed PSS growth after warm-up")
    memory.add_argument("--server-pid", type=int, help="the --url server's process id, for the memory figures")
    tg.add_target_args(ap, "soak", None, stage_metrics=False)
    args = ap.parse_args(argv)
    if args.duration < 10 or args.concurrency < 1 or args.overload <= 0:
        ap.error("--duration must be >= 10 s, --concurrency >= 1, --overload > 0")
    return tg.reported("soak", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    images = [s.image for s in inputs.photos(args.images)]
    out = run_dir("soak", args.runs_dir)
    print(f"soak: results -> {out}", flush=True)
    with tg.target(args.url, args.repo, out / "tritonserver.log", "soak") as tgt:
        url = tgt.url
        pid = tgt.pid or args.server_pid or find_server_pid(url)
        with DetectorClient(url, args.model, timeout_s=args.request_timeout) as client:
            num_classes = len(client.names)
            for im in images:  # warm every photo size once
                client.infer(im[None])
        idle_mb = MemorySampler(pid, args.sample_s).sample()[1] if pid else None
        print(f"soak: measuring the saturated rate ({args.concurrency} clients, {args.saturation_s:g} s)", flush=True)
        sat = saturate(url, [im[None] for im in images], args.concurrency, args.saturation_s, args.model,
                       warmup_s=2.0)
        print(f"soak: saturated rate R = {sat.requests_per_s:.2f} req/s ({sat.requests} requests, {sat.errors} "
              "errors)", flush=True)
        if sat.requests == 0:
            print("soak: no request completed while measuring saturation", file=sys.stderr)
            return 1
        users = 2 * args.concurrency
        rate_per_user = args.overload * sat.requests_per_s / users
        print(f"soak: pre-warming the server's pools for {users} outstanding requests", flush=True)
        prewarm(url, args.model, images, users)
        sampler = MemorySampler(pid, args.sample_s).start() if pid else None
        print(f"soak: Locust, {users} users x {rate_per_user:.3f} req/s (offered {args.overload:g} x R) for "
              f"{args.duration} s", flush=True)
        rc = _locust(out, url, args, users, rate_per_user, num_classes)
        if sampler:
            sampler.stop()

    s = _judge(out, args, url, sat, rc, users, rate_per_user, sampler, idle_mb)
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    text = summary_markdown(s)
    (out / "summary.md").write_text(text)
    print("\n" + text, flush=True)
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
