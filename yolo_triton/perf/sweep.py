"""perf_analyzer sweeps of every served ensemble: latency percentiles, throughput, and where the
time goes inside the ensemble (queue / compute input / compute infer / compute output of the
preprocess, detector and postprocess models; a fused model's stages from its stage metrics).

    yolo-triton perf [--model yolov8n_ort,...] [--concurrency 1,2,4,8] [--url HOST:PORT] [--quick]

Requests carry real photos (the shipped samples and Ultralytics' bus/zidane, each with its own
shape), never random bytes. For each variant: a concurrency sweep, then a request-rate sweep at
fractions of the peak throughput the concurrency sweep found (or at --request-rate). Each load
level is one perf_analyzer run, so one unstable level does not lose the others; a level that does
not stabilise is measured once more over a fixed request count and marked `stable=no`.

Without --url a tritonserver is started on free ports for the duration. Results:
runs/perf/<timestamp>/{latency.csv, stages.csv, summary.md, meta.json, raw/}.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.perf import inputs, perf_analyzer, stages
from yolo_triton.perf import target as tg
from yolo_triton.perf.probe import Probe, Window
from yolo_triton.perf.runs import run_dir, write_meta
from yolo_triton.perf.sweep_summary import LATENCY_COLUMNS, STAGE_COLUMNS, summary
from yolo_triton.perf.tables import write_csv


@dataclass
class Settings:
    request_count: int  # >0: one measurement over this many requests (no stability search)
    window_requests: int
    stability_pct: int
    max_trials: int
    distribution: str
    timeout_s: float


@dataclass
class Level:
    model: str
    mode: str  # "concurrency" | "request_rate"
    load: float
    row: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"concurrency {self.load:g}" if self.mode == "concurrency" else f"request rate {self.load:g}/s"


# Which levels are measured, each a list like 1,2,4,8 or start:end:step (parse_levels): option, help.
LEVEL_OPTIONS = (
    ("--concurrency", "levels, e.g. 1,2,4,8 (default; --quick: 1,2)"),
    ("--request-rate", "absolute request rates (req/s) for the rate sweep"),
    ("--rate-fractions", "rate sweep at these fractions of the peak concurrency throughput (default 0.25,0.5,0.75,1; "
                         "--quick: 0.5)"),
)
# How each level is measured (Settings): option, type, default, help.
MEASUREMENT_OPTIONS = (
    ("--window-requests", int, 20, "requests per stability window (count_windows)"),
    ("--stability", int, 20, "allowed spread between windows, %% (default 20)"),
    ("--max-trials", int, 5, "windows before a level counts as unstable"),
    ("--request-count", int, 0, "one measurement over this many requests per level, no stability search (--quick: 8)"),
    ("--timeout", float, 0, "seconds per perf_analyzer run before it is retried once (default 600, --quick 60)"),
)


class LevelFailed(RuntimeError):
    pass


def parse_levels(text: str) -> list[float]:
    """'1,2,4,8' or perf_analyzer's 'start:end:step'."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(x) for x in text.split(":")]
            start = parts[0]
            end = parts[1] if len(parts) > 1 else start
            step = parts[2] if len(parts) > 2 else 1.0
            if len(parts) > 3 or step <= 0 or end < start:
                raise ValueError
            out, x = [], start
            while x <= end + 1e-9:
                out.append(round(x, 3))
                x += step
            return out
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,2,4,8 or start:end:step, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"levels must be positive numbers, got {text!r}")
    return values


class Runner:
    def __init__(self, tgt: tg.Target, data: Path, raw: Path, s: Settings, alias_target: str | None) -> None:
        self.url, self.data, self.raw, self.s, self.alias_target = tgt.url, data, raw, s, alias_target
        self.stats_client = DetectorClient(tgt.url, timeout_s=30)
        self.metrics_url = tgt.metrics_url
        self.commands: list[str] = []  # every perf_analyzer run, failed ones included

    def close(self) -> None:
        self.stats_client.close()

    def measure(self, model: str, mode: str, load: float) -> Level:
        level = Level(model, mode, load)
        variant = tg.variant_of(model, self.alias_target)
        tag = f"{model}_{'c' if mode == 'concurrency' else 'r'}{load:g}"
        req = perf_analyzer.Request(model, self.url, self.data, extra=("--verbose-csv",))
        run = perf_analyzer.Load(int(load), 0.0) if mode == "concurrency" else \
            perf_analyzer.Load(0, load, self.s.distribution)
        s = self.s
        fixed = s.request_count and max(s.request_count, 2 * int(load))
        windows = max(s.window_requests, 4 * int(load))
        first = perf_analyzer.fixed_count(fixed) if fixed else \
            perf_analyzer.count_windows(windows, s.stability_pct, s.max_trials)
        # a shared or busy machine may never give three windows within the tolerance: take one
        # longer fixed-count measurement instead, and say so
        fallback = None if fixed else perf_analyzer.fixed_count(2 * windows)

        def timed_out() -> None:
            print(f"perf: {model}, {level.label}: perf_analyzer timed out after {s.timeout_s:.0f} s; "
                  "measuring once more", flush=True)

        probe = Probe(self.stats_client, self.metrics_url, [variant.ensemble] if variant else [])
        out = perf_analyzer.measure(req, run, self.raw, tag, first, fallback, s.timeout_s, probe, timed_out)
        level.commands = out.commands
        self.commands += out.commands
        if not out.ok:
            raise LevelFailed(out.problem(self.raw / f"{tag}.log"))
        level.row = {"model": model, "mode": mode, "load": load, **perf_analyzer.latency(out.row, out.text),
                     "stable": "yes" if out.stable else "no"}
        window = out.window if isinstance(out.window, Window) else Window()
        composing = perf_analyzer.composing(self.raw, f"{tag}.csv")
        times, source = (composing, "perf_analyzer") if composing else (window.times, "triton_statistics")
        level.stages = stages.rows(variant, times, window.splits, source) if variant else []
        for st in level.stages:
            st.update(model=model, mode=mode, load=load)
        return level


def describe(level: Level) -> str:
    r = level.row
    parts = "  ".join(f"{s['stage']} {s['total_ms']:.1f}" for s in level.stages)
    flag = "" if r["stable"] == "yes" else " (unstable: fixed-count measurement)"
    delayed = f", {r['delayed_pct']:.0f}% sends delayed" if r["delayed_pct"] else ""
    return (f"{r['throughput']:.2f} infer/s, p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms{delayed}{flag} | stages (ms): {parts}")


def _run(runner: Runner, model: str, mode: str, load: float, levels: list[Level], failures: list[str]) -> float:
    label = Level(model, mode, load).label
    print(f"perf: {model} {label} ...", flush=True)
    try:
        level = runner.measure(model, mode, load)
    except LevelFailed as e:
        failures.append(f"{model} {label}: {e}")
        print(f"perf: {model} {label}: FAILED {e}", flush=True)
        return 0.0
    levels.append(level)
    print(f"perf: {model} {label}: {describe(level)}", flush=True)
    return level.row["throughput"]


def _sweep(runner: Runner, models: list[str], args: argparse.Namespace, samples: list[inputs.Sample],
           levels: list[Level], failures: list[str]) -> None:
    for model in models:
        print(f"perf: {model}: warming up ({len(samples)} photos)", flush=True)
        tg.warm_up(runner.url, model, samples)
        peak = 0.0
        for c in args.concurrency:
            peak = max(peak, _run(runner, model, "concurrency", c, levels, failures))
        if args.no_request_rate:
            continue
        rates = args.request_rate or sorted({max(0.1, round(f * peak, 2)) for f in args.rate_fractions} if peak
                                            else set())
        if not rates:
            failures.append(f"{model}: no rate sweep (the concurrency sweep measured no throughput)")
        for r in rates:
            _run(runner, model, "request_rate", r, levels, failures)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="comma-separated ensembles (default: every variant the server has loaded)")
    for flag, text in LEVEL_OPTIONS:
        ap.add_argument(flag, type=parse_levels, help=text)
    ap.add_argument("--no-request-rate", action="store_true", help="skip the request-rate sweep")
    ap.add_argument("--distribution", choices=("constant", "poisson"), default="constant")
    for flag, kind, default, text in MEASUREMENT_OPTIONS:
        ap.add_argument(flag, type=kind, default=default, help=text)
    tg.add_target_args(ap, "perf", "a few seconds per level (tests, smoke checks)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    args.concurrency = args.concurrency or ([1, 2] if args.quick else [1, 2, 4, 8])
    if any(c != int(c) for c in args.concurrency):
        ap.error(f"--concurrency levels are whole numbers of requests in flight, got {args.concurrency}")
    args.concurrency = [int(c) for c in args.concurrency]
    args.rate_fractions = args.rate_fractions or ([0.5] if args.quick else [0.25, 0.5, 0.75, 1.0])
    args.request_count = args.request_count or (8 if args.quick else 0)
    args.timeout = args.timeout or (60 if args.quick else 600)
    return tg.reported("perf", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    settings = Settings(args.request_count, args.window_requests, args.stability, args.max_trials, args.distribution,
                        args.timeout)
    pa_version = perf_analyzer.version()
    samples = inputs.photos(args.images, args.quick)
    out = run_dir("perf", args.runs_dir)
    raw = out / "raw"
    raw.mkdir()
    data = inputs.write_input_data([s.image for s in samples], out / "input_data.json")
    print(f"perf: results -> {out}", flush=True)
    print(f"perf: {pa_version}; input data: {len(samples)} real photos "
          f"({', '.join(f'{s.name} {s.size}' for s in samples)})", flush=True)

    levels: list[Level] = []
    failures: list[str] = []
    t0 = time.monotonic()
    with tg.target(args.url, args.repo, out / "tritonserver.log", "perf", args.metrics_url) as tgt:
        server = tg.server_info(tgt)
        models = tg.choose(server, args.model)
        print(f"perf: measuring {', '.join(models)} on {tgt.url}"
              + (f" ({spec.ALIAS} -> {server['alias']})" if server.get("alias") else ""), flush=True)
        runner = Runner(tgt, data, raw, settings, server.get("alias"))
        try:
            _sweep(runner, models, args, samples, levels, failures)
        finally:
            commands = runner.commands
            runner.close()

    write_csv(out / "latency.csv", [lv.row for lv in levels], LATENCY_COLUMNS)
    write_csv(out / "stages.csv", [s for lv in levels for s in lv.stages], STAGE_COLUMNS)
    meta = {
        "server": server,
        "perf_analyzer": pa_version,
        "images": [(s.name, s.size) for s in samples],
        "settings": {"concurrency": args.concurrency, "rate_fractions": None if args.request_rate
                     else args.rate_fractions, "request_rate": args.request_rate,
                     "request_count": args.request_count, "window_requests": args.window_requests,
                     "stability_pct": args.stability, "max_trials": args.max_trials,
                     "distribution": args.distribution, "quick": args.quick, "rate_sweep": not args.no_request_rate},
        "perf_analyzer_commands": commands,
        "failures": failures,
    }
    (out / "summary.md").write_text(summary(levels, meta))
    write_meta(out, "perf", meta)
    print(f"perf: {len(levels)} levels measured in {time.monotonic() - t0:.0f}s; "
          f"latency.csv, stages.csv, summary.md in {out}", flush=True)
    for f in failures:
        print(f"perf: FAILED {f}", file=sys.stderr)
    return 1 if failures or not levels else 0


if __name__ == "__main__":
    sys.exit(main())
