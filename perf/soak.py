"""Soak test: Locust at about twice the saturated rate for a bounded time, the server's memory watched.

    python perf/soak.py [--duration 180] [--concurrency 8] [--url HOST:PORT [--server-pid PID]]
                        [--max-growth-mb 96] [--runs-dir runs]

1. Saturation: `--concurrency` DetectorClient threads send the sample photos back to back for
   `--saturation-s` seconds; completed requests per second is the saturated rate R.
2. Soak: Locust runs perf/locustfile.py's user, paced by constant_throughput: 2 x concurrency users,
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

Run as a script it drives everything; Locust loads this same file as its locustfile (the SoakUser
at the bottom), so the paced, checking user lives next to the figures it feeds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from yolo_triton import spec  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
MB = 1 << 20


class GrpcError(Exception):
    """A request the server failed; the message starts with the gRPC status name."""


class Malformed(Exception):
    """A reply that arrived but does not hold well-formed detections."""


def malformed(outputs: dict[str, np.ndarray | None], height: int, width: int, num_classes: int) -> str | None:
    """What is wrong with one single-image reply, or None when it is well-formed."""
    arrays = {}
    for t in spec.ENSEMBLE_OUTPUTS:
        a = outputs.get(t.name)
        if a is None:
            return f"{t.name} missing"
        if a.dtype != t.np_dtype:
            return f"{t.name} is {a.dtype}, expected {t.np_dtype}"
        arrays[t.name] = a
    boxes, scores = arrays[spec.BOXES.name], arrays[spec.SCORES.name]
    classes, counts = arrays[spec.CLASSES.name], arrays[spec.NUM_DETECTIONS.name]
    if boxes.ndim != 3 or boxes.shape[0] != 1 or boxes.shape[2] != 4:
        return f"BOXES shape {list(boxes.shape)}, expected [1, N, 4]"
    rows = boxes.shape[1]
    if scores.shape != (1, rows) or classes.shape != (1, rows) or counts.shape != (1, 1):
        return (f"shapes disagree: BOXES {list(boxes.shape)}, SCORES {list(scores.shape)}, "
                f"CLASSES {list(classes.shape)}, NUM_DETECTIONS {list(counts.shape)}")
    k = int(counts[0, 0])
    if not 0 <= k <= rows:
        return f"NUM_DETECTIONS {k} outside [0, {rows}]"
    b, s, c = boxes[0, :k], scores[0, :k], classes[0, :k]
    if not np.isfinite(b).all() or not np.isfinite(s).all():
        return "non-finite box or score"
    if ((s <= 0) | (s > 1)).any():
        return f"score outside (0, 1]: {s.min():.4f}..{s.max():.4f}"
    if ((c < 0) | (c >= num_classes)).any():
        return f"class id outside [0, {num_classes})"
    tol = 1e-3
    if ((b[:, 0] > b[:, 2] + tol) | (b[:, 1] > b[:, 3] + tol)).any():
        return "box with x1 > x2 or y1 > y2"
    if ((b < -tol).any() or (b[:, [0, 2]] > width + tol).any() or (b[:, [1, 3]] > height + tol).any()):
        return f"box outside the {width}x{height} image"
    return None


# --- the orchestrator ---------------------------------------------------------------------------


@dataclass
class Saturation:
    concurrency: int
    seconds: float
    requests: int
    rate: float  # requests/s at saturation
    errors: int


def measure_saturation(url: str, model: str, images: list[np.ndarray], concurrency: int, seconds: float,
                       warmup_s: float = 2.0) -> Saturation:
    """Closed-loop throughput with `concurrency` clients, each sending the photos back to back."""
    from yolo_triton.client.detector import DetectorClient, ServerError

    counts = [0] * concurrency
    errors = [0] * concurrency
    begin = time.monotonic() + warmup_s
    end = begin + seconds

    def worker(i: int) -> None:
        with DetectorClient(url, model, timeout_s=120) as client:
            k = i
            while time.monotonic() < end:
                try:
                    client.infer(images[k % len(images)][None])
                except ServerError:
                    errors[i] += 1
                if time.monotonic() >= begin:
                    counts[i] += 1
                k += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + warmup_s + 180)
    measured = sum(counts)
    return Saturation(concurrency, seconds, measured, measured / seconds, sum(errors))


def prewarm(url: str, model: str, images: list[np.ndarray], users: int) -> None:
    """Grow the server's pools to what the soak's load can ask of them, before memory is watched.

    With `users` single-image requests outstanding, no step ever sees more than `users` images at
    once: one request carrying that many copies of the largest photo, then as many concurrent
    single requests, take ONNX Runtime's arena, the python stubs' shared memory and the gRPC
    buffers to their high-water marks, so what grows afterwards is growth, not warm-up."""
    from yolo_triton.client.detector import DetectorClient

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


class MemorySampler:
    """PSS and RSS of a process and its children, every `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float, float, int]] = []  # (t, pss MB, rss MB, processes)
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, float, float, int]:
        import psutil

        pss = rss = 0
        procs = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                m = p.memory_full_info()
            except psutil.Error:  # a zombie (a stub that died) or one that just exited
                continue
            pss, rss, procs = pss + m.pss, rss + m.rss, procs + 1
        row = (time.monotonic() - self._start, pss / MB, rss / MB, procs)
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the server went away: the run reports it elsewhere
                return

    def start(self) -> MemorySampler:
        self._start = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()


def memory_figures(samples: list[tuple[float, float, float, int]], warmup_s: float) -> dict[str, float]:
    """PSS figures (MB): at the start, peak, and over the judged window (after warm-up) the medians
    of its first and last thirds; growth is their difference. Medians, because PSS under load
    swings by tens of MB with the requests in flight; a leak moves the whole last third."""
    pss = [s[1] for s in samples]
    judged = [s[1] for s in samples if s[0] >= warmup_s] or pss[-1:]
    third = max(len(judged) // 3, 1)
    baseline, end = statistics.median(judged[:third]), statistics.median(judged[-third:])
    return {"start_mb": pss[0], "after_warmup_mb": baseline, "end_mb": end, "peak_mb": max(pss),
            "growth_mb": end - baseline, "start_rss_mb": samples[0][2], "end_rss_mb": samples[-1][2],
            "samples": len(samples)}


def failures_by_type(csv_path: Path) -> Counter:
    """Locust's failures CSV -> occurrences per kind (gRPC status name, 'malformed', or 'other')."""
    import csv

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


def aggregated(stats_csv: Path) -> dict[str, str]:
    import csv

    if not stats_csv.exists():
        return {}
    with stats_csv.open() as f:
        return next((r for r in csv.DictReader(f) if r.get("Name") == "Aggregated"), {})


def run_locust(out: Path, url: str, model: str, users: int, rate_per_user: float, duration: int,
               num_classes: int, timeout: float) -> int:
    cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{duration}s", "--stop-timeout", f"{timeout:.0f}",
           "--csv", str(out / "locust"), "--only-summary", "--exit-code-on-error", "0",
           "--triton-url", url, "--triton-model", model, "--request-timeout", f"{timeout:g}",
           "--soak-rate", f"{rate_per_user:.4f}", "--soak-classes", str(num_classes)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with (out / "locust.log").open("w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              timeout=duration + timeout + 120)
    return proc.returncode


def find_server_pid(url: str) -> int | None:
    """The process listening on the url's port (psutil may need privileges to see it)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except psutil.Error:
        return None
    return None


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


def main(argv: list[str] | None = None) -> int:
    from yolo_triton.client.detector import DetectorClient, ServerError
    from yolo_triton.perf import tools as pt
    from yolo_triton.serve.launcher import LaunchError, Server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=180, help="seconds of Locust load (default 180)")
    ap.add_argument("--concurrency", type=int, default=8, help="clients for the saturation measurement")
    ap.add_argument("--saturation-s", type=float, default=8.0, help="seconds of the saturation measurement")
    ap.add_argument("--overload", type=float, default=2.0, help="offered load as a multiple of R (default 2)")
    ap.add_argument("--sample-s", type=float, default=3.0, help="memory sampling interval, seconds")
    ap.add_argument("--warmup-frac", type=float, default=0.2, help="share of the run before memory must be flat")
    ap.add_argument("--max-growth-mb", type=float, default=96.0, help="allowed PSS growth after warm-up")
    ap.add_argument("--request-timeout", type=float, default=120.0, help="deadline per request, seconds")
    ap.add_argument("--model", default=spec.ALIAS)
    ap.add_argument("--server-pid", type=int, help="the --url server's process id, for the memory figures")
    pt.add_target_args(ap, "soak", None)
    args = ap.parse_args(argv)
    if args.duration < 10 or args.concurrency < 1 or args.overload <= 0:
        ap.error("--duration must be >= 10 s, --concurrency >= 1, --overload > 0")

    try:
        samples = pt.sample_images(args.images)
    except Exception as e:  # noqa: BLE001 - PerfToolError or InputError: both name the problem
        print(f"soak: {e}", file=sys.stderr)
        return 2
    out = pt.run_dir("soak", args.runs_dir)
    print(f"soak: results -> {out}", flush=True)
    images = [s.image for s in samples]
    server: Server | None = None
    sampler: MemorySampler | None = None
    try:
        if args.url:
            url, pid = args.url, args.server_pid or find_server_pid(args.url)
        else:
            print(f"soak: starting tritonserver (repository {args.repo})", flush=True)
            server = Server(args.repo, log=out / "tritonserver.log").start()
            url, pid = server.url, server.proc.pid if server.proc else None
        with DetectorClient(url, args.model, timeout_s=args.request_timeout) as client:
            num_classes = len(client.names)
            for im in images:  # warm every photo size once
                client.infer(im[None])
        idle_mb = MemorySampler(pid, args.sample_s).sample()[1] if pid else None
        print(f"soak: measuring the saturated rate ({args.concurrency} clients, {args.saturation_s:g} s)", flush=True)
        sat = measure_saturation(url, args.model, images, args.concurrency, args.saturation_s)
        print(f"soak: saturated rate R = {sat.rate:.2f} req/s ({sat.requests} requests, {sat.errors} errors)",
              flush=True)
        if sat.requests == 0:
            print("soak: no request completed while measuring saturation", file=sys.stderr)
            return 1
        users = 2 * args.concurrency
        rate_per_user = args.overload * sat.rate / users
        print(f"soak: pre-warming the server's pools for {users} outstanding requests", flush=True)
        prewarm(url, args.model, images, users)
        sampler = MemorySampler(pid, args.sample_s).start() if pid else None
        print(f"soak: Locust, {users} users x {rate_per_user:.3f} req/s (offered {args.overload:g} x R) for "
              f"{args.duration} s", flush=True)
        rc = run_locust(out, url, args.model, users, rate_per_user, args.duration, num_classes,
                        args.request_timeout)
        if sampler:
            sampler.stop()
    except (LaunchError, ServerError, subprocess.TimeoutExpired) as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()

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
        memory = memory_figures(sampler.samples, args.warmup_frac * args.duration)
        if memory["growth_mb"] > args.max_growth_mb:
            problems.append(f"server memory grew {memory['growth_mb']:.0f} MB after warm-up "
                            f"(limit {args.max_growth_mb:g} MB)")
        with (out / "memory.csv").open("w") as f:
            f.write("t_s,pss_mb,rss_mb,processes\n")
            f.writelines(f"{t:.1f},{p:.1f},{r:.1f},{n}\n" for t, p, r, n in sampler.samples)
    if memory is not None:
        memory["idle_mb"] = idle_mb
    rps = float(agg.get("Requests/s", 0) or 0)
    s = {
        "model": args.model, "url": url, "duration_s": args.duration, "users": users,
        "rate_per_user": rate_per_user, "offered_rate": rate_per_user * users, "saturation": asdict(sat),
        "offered_over_achieved": rate_per_user * users / rps if rps else 0.0,
        "locust": {"requests": reqs, "failures": fails, "rps": rps,
                   "p50_ms": float(agg.get("50%", 0) or 0), "p95_ms": float(agg.get("95%", 0) or 0),
                   "max_ms": float(agg.get("Max Response Time", 0) or 0)},
        "failures_by_type": dict(kinds), "unexpected_errors": unexpected, "memory": memory,
        "max_growth_mb": args.max_growth_mb, "problems": problems, "passed": not problems,
    }
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    text = summary_markdown(s)
    (out / "summary.md").write_text(text)
    print("\n" + text, flush=True)
    return 0 if not problems else 1


# --- the Locust side (this file is also the locustfile) -----------------------------------------


def _soak_user():  # noqa: ANN202 - a User subclass, built only inside Locust
    """perf/locustfile.py's user, paced to a constant rate and checking every reply."""
    import importlib.util

    from locust import constant_throughput, events
    from tritonclient.utils import InferenceServerException

    name = "yolo_triton_locustfile"
    found = importlib.util.spec_from_file_location(name, LOCUSTFILE)
    assert found is not None and found.loader is not None, LOCUSTFILE
    base_module = importlib.util.module_from_spec(found)
    sys.modules[name] = base_module
    found.loader.exec_module(base_module)  # registers its --triton-* options and sample loading

    @events.init_command_line_parser.add_listener
    def _options(parser) -> None:  # noqa: ANN001 - locust's configargparse parser
        parser.add_argument("--soak-rate", type=float, default=1.0, help="requests/s per user")
        parser.add_argument("--soak-classes", type=int, default=80, help="number of classes the model has")

    class SoakUser(base_module.TritonGrpcUser):
        def wait_time(self) -> float:
            return constant_throughput(self.environment.parsed_options.soak_rate)(self)

        def on_start(self) -> None:
            super().on_start()
            self.sizes = {s.name: s.image.shape[:2] for s in base_module._SAMPLES}
            self.num_classes = self.environment.parsed_options.soak_classes

        def soak_detect(self) -> None:
            image, inputs = self.requests[self.turn % len(self.requests)]
            self.turn += 1
            start = time.perf_counter()
            length, error = 0, None
            try:
                result = self.client.infer(self.model, inputs, outputs=base_module.OUTPUTS,
                                           client_timeout=self.timeout)
                length = result.get_response().ByteSize()
                problem = malformed({t.name: result.as_numpy(t.name) for t in spec.ENSEMBLE_OUTPUTS},
                                    *self.sizes[image], self.num_classes)
                if problem:
                    error = Malformed(f"{image}: {problem}")
            except InferenceServerException as e:
                error = GrpcError(f"{(e.status() or 'UNKNOWN').removeprefix('StatusCode.')}: {e.message()}")
            except Exception as e:  # noqa: BLE001 - every error is reported to Locust, with its kind
                error = GrpcError(f"{type(e).__name__}: {e}")
            self.environment.events.request.fire(
                request_type="grpc", name=self.model, response_time=(time.perf_counter() - start) * 1e3,
                response_length=length, exception=error, context={"image": image},
            )

    SoakUser.tasks = [SoakUser.soak_detect]  # replaces the inherited task instead of adding to it
    return SoakUser


if __name__ == "__main__":
    sys.exit(main())
elif "locust" in sys.modules:  # loaded by `locust -f perf/soak.py`
    SoakUser = _soak_user()
