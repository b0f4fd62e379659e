"""`yolo-triton scale`: replicas behind a real load balancer, one crashed and restarted under load,
and the autoscaler's signal from a real Prometheus checked against Triton's own statistics.

    yolo-triton scale [--replicas 3] [--duration 60] [--users 4] [--repo DIR] [--runs-dir runs]

What a Kubernetes deployment of deploy/k8s does, on one machine and on loopback:

1. `--replicas` tritonservers serve the same model repository (yolo_triton.perf.replicas), each
   loading only the variant `yolov8n` points to.
2. nginx balances gRPC over them request by request (yolo_triton.perf.balancer), failing over
   from a replica that refuses or drops a connection.
3. Prometheus scrapes every replica each second and records spec.QUEUE_PER_REQUEST_RULE, the
   rule prometheus-adapter serves the HorizontalPodAutoscaler (yolo_triton.perf.prometheus).
4. Locust's users (perf/locustfile.py) send the sample photos through the balancer for
   `--duration` seconds. At `--kill-at` of the run one replica is killed (SIGKILL, a crash); at
   `--restart-at` it is started again on the same ports.
5. The queue time per request over the whole load, from Prometheus (the rule's expression over the
   run's window) and from Triton's statistics (summed over every replica's incarnations), must
   agree within `--tolerance`, and no request may fail.

The run ends with one line:
    scale: R replicas, N requests, F failed, queue_us_per_request=<x> (prometheus) vs <y> (triton statistics)
and exits 1 when a request failed or the two figures disagree. Results: runs/scale/<timestamp>/
(summary.json, replica logs, nginx's access log, Prometheus' config and data, Locust's CSVs);
processes.json lists every process it started, all of them stopped at the end or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

from yolo_triton import spec
from yolo_triton.paths import DEFAULT_REPO, RUNS
from yolo_triton.perf import inputs, locust_process
from yolo_triton.perf import target as tg
from yolo_triton.perf.balancer import GrpcBalancer, routed
from yolo_triton.perf.errors import PerfToolError
from yolo_triton.perf.locust import positive
from yolo_triton.perf.prometheus import SCRAPE_S, Prometheus, PrometheusUnavailable, find_prometheus, queue_over
from yolo_triton.perf.replicas import QueueTally, Replicas, served_variant
from yolo_triton.perf.runs import run_dir, write_meta
from yolo_triton.perf.tables import aggregated
from yolo_triton.serve import nginx
from yolo_triton.serve.launcher import free_port

STOP_TIMEOUT_S = 30  # users finish their request in flight at the end
CLIENT_RETRIES = 4  # a request the lost replica had in flight comes back UNAVAILABLE; the user sends it again
SETTLE_S = 2.5 * SCRAPE_S  # Prometheus has scraped every replica at least twice since the last change


def line(replicas: int, requests: int, failed: int, prometheus: float, triton: float) -> str:
    """The run's one-line result (tests parse it)."""
    return (f"scale: {replicas} replicas, {requests} requests, {failed} failed, "
            f"queue_us_per_request={prometheus:.1f} (prometheus) vs {triton:.1f} (triton statistics)")


def agree(a: float, b: float, tolerance: float) -> bool:
    """Within `tolerance` of the larger of the two (and both real numbers)."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-9)


class Run:
    """One scale run's processes, each one stopped by stop() however the run ends."""

    def __init__(self, args: argparse.Namespace, out: Path, variant: spec.Variant) -> None:
        self.args, self.out = args, out
        self.replicas = Replicas(args.repo, args.replicas, out, variant)
        self.balancer: GrpcBalancer | None = None
        self.prometheus: Prometheus | None = None
        self.locust = None  # subprocess.Popen, once started
        self.events: list[dict] = []

    def note(self, what: str, t0: float) -> None:
        self.events.append({"t_s": round(time.monotonic() - t0, 1), "event": what})
        print(f"scale: {time.monotonic() - t0:5.1f} s: {what}", flush=True)

    def record_processes(self) -> None:
        """processes.json: the pids of everything started (a test checks they are all gone after)."""
        pids = {"tritonserver": self.replicas.pids,
                "nginx": [self.balancer.proc.pid] if self.balancer and self.balancer.proc else [],
                "prometheus": [self.prometheus.proc.pid] if self.prometheus and self.prometheus.proc else [],
                "locust": [self.locust.pid] if self.locust else []}
        (self.out / "processes.json").write_text(json.dumps(pids))

    def start(self) -> None:
        a = self.args
        print(f"scale: starting {a.replicas} tritonserver replicas of {self.replicas.only[0]} (logs in {self.out})",
              flush=True)
        try:
            self.replicas.start()
        finally:
            self.record_processes()
        self.balancer = GrpcBalancer(free_port(), [p.grpc for p in self.replicas.ports],
                                     self.out / "nginx").start()
        self.prometheus = Prometheus(free_port(), self.replicas.metrics_targets, self.out / "prometheus").start()
        self.record_processes()
        for target in self.replicas.metrics_targets:  # Prometheus applies new targets after up to 5 s
            if not self.prometheus.wait_for_scrape(target, timeout=30):
                raise PrometheusUnavailable(f"Prometheus did not scrape {target} within 30 s "
                                            f"(see {self.out / 'prometheus'})")
        print(f"scale: replicas {', '.join(self.replicas.urls)}; balancer {self.balancer.url}; "
              f"prometheus {self.prometheus.url}", flush=True)

    def load(self, samples: list[inputs.Sample]) -> tuple[float, float, int]:
        """Locust through the balancer with the kill and the restart; (start, end) in unix time, rc."""
        a = self.args
        for url in self.replicas.urls:  # first-call costs stay out of the measured queue time
            tg.warm_up(url, a.model, samples)
        time.sleep(SETTLE_S)
        self.replicas.mark()
        start = time.time() - SCRAPE_S  # the window opens on a scrape of the settled counters
        cmd = locust_process.command(self.out / "locust", self.balancer.url, a.model, a.users, a.users,
                                     a.duration, STOP_TIMEOUT_S, "--only-summary",
                                     "--triton-retries", str(CLIENT_RETRIES))
        result: dict[str, int] = {}

        def started(proc: object) -> None:
            self.locust = proc
            self.record_processes()

        thread = threading.Thread(target=lambda: result.update(rc=locust_process.run(
            cmd, self.out / "locust.log", a.duration + STOP_TIMEOUT_S + 120, "scale", echo=False, started=started)),
            daemon=True)
        t0 = time.monotonic()
        thread.start()
        print(f"scale: Locust, {a.users} users for {a.duration} s through {self.balancer.url} against {a.model}",
              flush=True)
        victim = a.replicas - 1
        self._until(t0, a.kill_at * a.duration, thread)
        if thread.is_alive():
            self.prometheus.wait_for_scrape(self.replicas.metrics_targets[victim])  # its last life, scraped
            self.note(f"killing replica {victim} ({self.replicas.urls[victim]}) with SIGKILL", t0)
            self.replicas.kill(victim)
            self._until(t0, a.restart_at * a.duration, thread)
            self.note(f"restarting replica {victim}", t0)
            self.replicas.restart(victim)
            self.record_processes()
            self.note(f"replica {victim} ready again", t0)
        thread.join()
        self.note("Locust finished", t0)
        time.sleep(SETTLE_S)
        return start, time.time(), result.get("rc", 1)

    @staticmethod
    def _until(t0: float, at_s: float, thread: threading.Thread) -> None:
        while thread.is_alive() and time.monotonic() - t0 < at_s:
            time.sleep(0.1)

    def stop(self) -> None:
        if self.locust is not None and self.locust.poll() is None:
            self.locust.terminate()
        for part in (self.balancer, self.prometheus):
            if part is not None:
                part.stop()
        self.replicas.stop()


def judge(args: argparse.Namespace, out: Path, run: Run, window: tuple[float, float], rc: int,
          tally: QueueTally) -> dict:
    start, end = window
    agg = aggregated(out / "locust_stats.csv")
    requests, failed = int(agg.get("Request Count", 0) or 0), int(agg.get("Failure Count", 0) or 0)
    from_prometheus = run.prometheus.scalar(queue_over(start, end), at=end)
    recorded = run.prometheus.query(spec.QUEUE_PER_REQUEST_RULE, at=end - SETTLE_S)
    by_replica = {metric: {s.get("instance", ""): v for s, v in run.prometheus.query(
        f'sum by (instance)(increase({metric}{{model=~"{spec.QUEUED_MODELS}"}}[{round(end - start)}s]))', at=end)}
        for metric in (spec.TRITON_QUEUE_METRIC, spec.TRITON_SUCCESS_METRIC)}
    problems = []
    if rc != 0 or not agg:
        problems.append(f"Locust exited {rc} (log: {out / 'locust.log'})")
    if requests == 0:
        problems.append("no request completed")
    if failed:
        problems.append(f"{failed} requests failed (see {out / 'locust_failures.csv'})")
    if not agree(from_prometheus, tally.per_request, args.tolerance):
        problems.append(f"Prometheus and Triton's statistics disagree by more than {100 * args.tolerance:g}%")
    if not recorded:
        problems.append(f"Prometheus recorded no {spec.QUEUE_PER_REQUEST_RULE} series")
    return {"replicas": args.replicas, "requests": requests, "failed": failed, "duration_s": args.duration,
            "users": args.users, "model": args.model, "queued_models": spec.QUEUED_MODELS,
            "queue_us_per_request": {"prometheus": from_prometheus, "triton_statistics": tally.per_request},
            "triton_requests": tally.requests, "incarnations": tally.incarnations,
            "prometheus_by_replica": by_replica,
            "recorded_rule": {s.get("instance", ""): v for s, v in recorded},
            "balancer": routed(run.balancer.access_log),
            "window": {"start": start, "end": end}, "events": run.events, "problems": problems,
            "passed": not problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=3, help="tritonserver replicas (at least 2: one is killed)")
    ap.add_argument("--duration", type=int, default=60, help="seconds of load (at least 10)")
    ap.add_argument("--users", type=positive(int), help="Locust users (default: 2 per replica)")
    ap.add_argument("--kill-at", type=float, default=0.3, help="share of the run at which a replica is killed")
    ap.add_argument("--restart-at", type=float, default=0.5, help="share of the run at which it is restarted")
    ap.add_argument("--tolerance", type=positive(float), default=0.10, help="allowed relative difference")
    ap.add_argument("--model", default=spec.ALIAS, help=f"ensemble the users call (default {spec.ALIAS})")
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository every replica serves")
    ap.add_argument("--runs-dir", type=Path, default=RUNS, help="results go to RUNS_DIR/scale/<timestamp>/")
    args = ap.parse_args(argv)
    if args.replicas < 2:
        ap.error("--replicas must be at least 2: one of them is killed during the run")
    if args.duration < 10:
        ap.error("--duration must be at least 10 seconds")
    if not 0 < args.kill_at < args.restart_at < 1:
        ap.error("need 0 < --kill-at < --restart-at < 1 (shares of --duration)")
    args.users = args.users or 2 * args.replicas
    try:
        return tg.reported("scale", lambda: _main(args))
    except KeyboardInterrupt:
        print("scale: interrupted; every process it started has been stopped", file=sys.stderr, flush=True)
        return 130


def _main(args: argparse.Namespace) -> int:
    try:
        nginx.find_nginx("the gRPC balancer of `yolo-triton scale`")
        find_prometheus()
    except (nginx.ProxyUnavailable, PrometheusUnavailable) as e:
        raise PerfToolError(str(e)) from None
    variant = served_variant(args.repo)
    samples = inputs.photos([])
    out = run_dir("scale", args.runs_dir)
    print(f"scale: results -> {out}", flush=True)
    run = Run(args, out, variant)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM cleans up like Ctrl-C
    try:
        run.start()
        start, end, rc = run.load(samples)
        tally = run.replicas.finish()
        s = judge(args, out, run, (start, end), rc, tally)
    except (nginx.ProxyUnavailable, PrometheusUnavailable) as e:
        raise PerfToolError(str(e)) from None
    finally:
        run.stop()
        signal.signal(signal.SIGTERM, previous)
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    write_meta(out, "scale", {k: v for k, v in s.items() if k not in ("incarnations", "events")})
    b = s["balancer"]
    print(f"scale: the balancer answered {', '.join(f'{n} via {r}' for r, n in sorted(b['answered_by'].items()))}; "
          f"lost with a replica (502) and retried by their client: {b['bad_gateway']}", flush=True)
    for p in s["problems"]:
        print(f"scale: {p}", file=sys.stderr, flush=True)
    q = s["queue_us_per_request"]
    print(line(args.replicas, s["requests"], s["failed"], q["prometheus"], q["triton_statistics"]), flush=True)
    return 0 if s["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
