"""perf_analyzer sweeps of every served ensemble: latency percentiles, throughput, and where the
time goes inside the ensemble (queue / compute input / compute infer / compute output of the
preprocess, detector and postprocess models).

    python perf/perf_sweep.py [--model yolov8n_ort,...] [--concurrency 1,2,4,8] [--url HOST:PORT] [--quick]

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
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from yolo_triton import spec  # noqa: E402
from yolo_triton.client.detector import DetectorClient, ServerError  # noqa: E402
from yolo_triton.perf import stats  # noqa: E402
from yolo_triton.perf import tools as pt  # noqa: E402
from yolo_triton.pipeline.validation import InputError  # noqa: E402
from yolo_triton.serve.launcher import LaunchError  # noqa: E402

US = 1e-3  # perf_analyzer reports microseconds; everything here is milliseconds
ROLES = ("preprocess", "detector", "postprocess")
PHASE_COLUMNS = {  # perf_analyzer CSV column -> our name
    "Server Queue": "queue",
    "Server Compute Input": "compute_input",
    "Server Compute Infer": "compute_infer",
    "Server Compute Output": "compute_output",
}
LATENCY_COLUMNS = [
    "model", "mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms",
    "client_send_ms", "network_ms", "server_queue_ms", "server_compute_input_ms", "server_compute_infer_ms",
    "server_compute_output_ms", "client_recv_ms", "delayed_pct", "stable",
]
STAGE_COLUMNS = ["model", "mode", "load", "stage", "composing_model", "queue_ms", "compute_input_ms",
                 "compute_infer_ms", "compute_output_ms", "total_ms", "source"]
UNSTABLE = "Failed to obtain stable measurement"


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


def roles_of(model: str, alias_target: str | None) -> dict[str, str]:
    """composing model -> stage role, for the variant an ensemble (or the alias) runs."""
    v = pt.variant_of(alias_target if model == spec.ALIAS and alias_target else model)
    return v.stages if v else {}


def command(binary: Path, url: str, model: str, mode: str, load: float, data: Path, csv_name: str,
            s: Settings, request_count: int) -> list[str]:
    cmd = [str(binary), "-m", model, "-i", "grpc", "-u", url, "-b", "1", "--input-data", str(data),
           "-f", csv_name, "--verbose-csv"]
    if mode == "concurrency":
        cmd += ["--concurrency-range", f"{int(load)}"]
    else:
        # async: a thread waiting on a slow reply must not delay the next scheduled send
        cmd += ["--request-rate-range", f"{load:g}", "--async", "--request-distribution", s.distribution]
    if request_count:
        cmd += ["--request-count", str(request_count)]
    else:
        cmd += ["--measurement-mode", "count_windows", "--measurement-request-count",
                str(max(s.window_requests, 4 * int(load))), "-s", str(s.stability_pct), "-r", str(s.max_trials)]
    return cmd


def composing_rows(raw: Path, csv_name: str, roles: dict[str, str]) -> list[dict]:
    """perf_analyzer writes one `<model>_v<version>.<csv>` per composing model of an ensemble."""
    rows = []
    for f in sorted(raw.glob(f"*_v*.{csv_name}")):
        name = f.name[: -len(csv_name) - 1].rsplit("_v", 1)[0]
        data = pt.read_csv(f)
        if not data or name not in roles:
            continue
        r = data[0]
        ms = {ours: float(r.get(theirs, 0.0)) * US for theirs, ours in PHASE_COLUMNS.items()}
        rows.append({"stage": roles[name], "composing_model": name, **{f"{k}_ms": v for k, v in ms.items()},
                     "total_ms": sum(ms.values()), "source": "perf_analyzer"})
    return sorted(rows, key=lambda r: ROLES.index(r["stage"]))


def stats_rows(before: dict, after: dict, roles: dict[str, str]) -> list[dict]:
    """Fallback when perf_analyzer wrote no composing-model CSV: Triton's statistics diffed
    around the run (all of its requests, not only the measured window). A fused variant has no
    stages (no roles): one model does all three."""
    rows = []
    for st in stats.diff(before, after, list(roles)):
        ms = {p: st.ms[p] for p in stats.PHASES}
        rows.append({"stage": roles[st.model], "composing_model": st.model, **{f"{k}_ms": v for k, v in ms.items()},
                     "total_ms": st.total_ms, "source": "triton_statistics"})
    return sorted(rows, key=lambda r: ROLES.index(r["stage"]))


def latency_row(r: dict, stdout: str) -> dict:
    def ms(col: str) -> float:
        return float(r.get(col, 0.0)) * US

    delayed = re.search(r"([\d.]+)% of the requests were delayed", stdout)
    return {
        "throughput": float(r.get("Inferences/Second", 0.0)),
        "p50_ms": ms("p50 latency"), "p90_ms": ms("p90 latency"), "p95_ms": ms("p95 latency"),
        "p99_ms": ms("p99 latency"), "avg_ms": ms("Avg latency"),
        "client_send_ms": ms("Client Send"), "network_ms": ms("Network+Server Send/Recv"),
        "server_queue_ms": ms("Server Queue"), "server_compute_input_ms": ms("Server Compute Input"),
        "server_compute_infer_ms": ms("Server Compute Infer"), "server_compute_output_ms": ms("Server Compute Output"),
        "client_recv_ms": ms("Client Recv"),
        "delayed_pct": float(delayed.group(1)) if delayed else 0.0,
    }


class Runner:
    def __init__(self, url: str, data: Path, raw: Path, s: Settings, alias_target: str | None) -> None:
        self.url, self.data, self.raw, self.s, self.alias_target = url, data, raw, s, alias_target
        self.binary = pt.perf_analyzer_path()
        self.env = pt.perf_analyzer_env()
        self.stats_client = DetectorClient(url, timeout_s=30)
        self.commands: list[str] = []  # every perf_analyzer run, failed ones included

    def close(self) -> None:
        self.stats_client.close()

    def _invoke(self, level: Level, tag: str, request_count: int) -> tuple[int, str, str, dict, dict]:
        csv_name = f"{tag}.csv"
        for old in self.raw.glob(f"*{csv_name}"):
            old.unlink()
        cmd = command(self.binary, self.url, level.model, level.mode, level.load, self.data, csv_name, self.s,
                      request_count)
        level.commands.append(" ".join(cmd))
        self.commands.append(level.commands[-1])
        before = stats.snapshot(self.stats_client.model_stats())
        try:
            out = subprocess.run(cmd, cwd=self.raw, env=self.env, capture_output=True, text=True,
                                 timeout=self.s.timeout_s)
            text, rc = out.stdout + out.stderr, out.returncode
        except subprocess.TimeoutExpired as e:
            text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            text += f"\n[perf_sweep] timed out after {self.s.timeout_s:.0f}s"
            rc = 124
        after = stats.snapshot(self.stats_client.model_stats())
        (self.raw / f"{tag}.log").write_text(" ".join(cmd) + "\n\n" + text)
        return rc, text, csv_name, before, after

    def measure(self, model: str, mode: str, load: float) -> Level:
        level = Level(model, mode, load)
        tag = f"{model}_{'c' if mode == 'concurrency' else 'r'}{load:g}"
        fixed = self.s.request_count and max(self.s.request_count, 2 * int(load))
        rc, text, csv_name, before, after = self._invoke(level, tag, fixed)
        if rc == 124:  # perf_analyzer 2.51 was seen to hang in request-rate mode with a small request count
            print(f"perf: {model}, {level.label}: perf_analyzer timed out after {self.s.timeout_s:.0f} s; "
                  "measuring once more", flush=True)
            rc, text, csv_name, before, after = self._invoke(level, tag, fixed)
        stable = True
        if rc != 0 and UNSTABLE in text and not fixed:
            # a shared or busy machine may never give three windows within the tolerance:
            # take one longer fixed-count measurement instead, and say so
            stable = False
            longer = 2 * max(self.s.window_requests, 4 * int(load))
            rc, text, csv_name, before, after = self._invoke(level, tag, longer)
        main_csv = self.raw / csv_name
        if rc != 0 or not main_csv.exists():
            tail = [ln for ln in text.strip().splitlines() if ln.strip()][-3:]
            raise LevelFailed(f"perf_analyzer exit {rc}: {' | '.join(tail)} (log: {self.raw / (tag + '.log')})")
        rows = pt.read_csv(main_csv)
        if not rows:
            raise LevelFailed(f"perf_analyzer wrote an empty {main_csv}")
        level.row = {"model": model, "mode": mode, "load": load, **latency_row(rows[0], text),
                     "stable": "yes" if stable else "no"}
        roles = roles_of(model, self.alias_target)
        level.stages = composing_rows(self.raw, csv_name, roles) or stats_rows(before, after, roles)
        for st in level.stages:
            st.update(model=model, mode=mode, load=load)
        return level


def describe(level: Level) -> str:
    r = level.row
    stages = "  ".join(f"{s['composing_model']} {s['total_ms']:.1f}" for s in level.stages)
    flag = "" if r["stable"] == "yes" else " (unstable: fixed-count measurement)"
    delayed = f", {r['delayed_pct']:.0f}% sends delayed" if r["delayed_pct"] else ""
    return (f"{r['throughput']:.2f} infer/s, p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms{delayed}{flag} | stages (ms): {stages}")


def warm_up(url: str, model: str, samples: list[pt.Sample]) -> None:
    """One request per photo shape, so first-call costs (session init, allocations) stay out."""
    with DetectorClient(url, model=model, timeout_s=120) as c:
        for s in samples:
            c.detect(s.image)


def settings_text(s: dict) -> str:
    how = (f"one measurement of {s['request_count']} requests per level" if s["request_count"] else
           f"count windows of {s['window_requests']} requests, stable within {s['stability_pct']}% "
           f"(max {s['max_trials']} trials)")
    if not s.get("rate_sweep", True):
        rates = "no request-rate sweep"
    elif s["request_rate"]:
        rates = f"request rates {', '.join(f'{r:g}' for r in s['request_rate'])}/s ({s['distribution']})"
    else:
        rates = (f"request rates at {', '.join(f'{f:g}' for f in s['rate_fractions'])} x peak throughput "
                 f"({s['distribution']})")
    return (f"concurrency {', '.join(f'{c:g}' for c in s['concurrency'])}; {rates}; {how}"
            + (" [quick]" if s["quick"] else ""))


def summary(levels: list[Level], meta: dict) -> str:
    out = ["# perf_analyzer sweep", ""]
    info = meta["server"]
    out += [f"- server: tritonserver {info.get('tritonserver')} at {info.get('url')}"
            + (f" (`{spec.ALIAS}` -> `{info['alias']}`)" if info.get("alias") else ""),
            f"- images: {', '.join(f'{n} ({sz})' for n, sz in meta['images'])}",
            f"- settings: {settings_text(meta['settings'])}",
            *([f"- not served: {'; '.join(f'{k}: {v}' for k, v in info['skipped'].items())}"]
              if info.get("skipped") else []), ""]
    for model in dict.fromkeys(lv.model for lv in levels):
        mine = [lv for lv in levels if lv.model == model]
        out += [f"## {model}", "", "### Latency and throughput (ms, infer/s)", ""]
        out.append(pt.markdown_table([{**lv.row, "load": f"{lv.load:g}"} for lv in mine],
                                     ["mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms",
                                      "delayed_pct", "stable"], 2))
        out += ["", "### Where the time goes (ms per request: queue + compute input/infer/output)", ""]
        rows = []
        for lv in mine:
            row: dict = {"mode": lv.mode, "load": f"{lv.load:g}", "client avg": lv.row["avg_ms"]}
            for s in lv.stages:
                compute = s["compute_input_ms"] + s["compute_infer_ms"] + s["compute_output_ms"]
                row[s["stage"]] = f"{s['queue_ms']:.1f} + {compute:.1f}"
            rows.append(row)
        out.append(pt.markdown_table(rows, ["mode", "load", *ROLES, "client avg"], 1))
        out.append("")
    models = list(dict.fromkeys(lv.model for lv in levels))
    if len(models) > 1:
        out += ["## Best variant per load level", ""]
        rows = []
        for mode in ("concurrency", "request_rate"):
            for load in sorted({lv.load for lv in levels if lv.mode == mode}):
                here = [lv for lv in levels if lv.mode == mode and lv.load == load]
                if len(here) < 2:
                    continue
                best_t = max(here, key=lambda lv: lv.row["throughput"])
                best_p = min(here, key=lambda lv: lv.row["p95_ms"])
                rows.append({"mode": mode, "load": f"{load:g}", "most throughput": best_t.model,
                             "lowest p95": best_p.model})
        out.append(pt.markdown_table(rows, ["mode", "load", "most throughput", "lowest p95"]))
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="comma-separated ensembles (default: every variant the server has loaded)")
    ap.add_argument("--concurrency", type=parse_levels, help="levels, e.g. 1,2,4,8 (default; --quick: 1,2)")
    ap.add_argument("--request-rate", type=parse_levels, help="absolute request rates (req/s) for the rate sweep")
    ap.add_argument("--rate-fractions", type=parse_levels,
                    help="rate sweep at these fractions of the peak concurrency throughput (default 0.25,0.5,0.75,1; "
                         "--quick: 0.5)")
    ap.add_argument("--no-request-rate", action="store_true", help="skip the request-rate sweep")
    ap.add_argument("--distribution", choices=("constant", "poisson"), default="constant")
    ap.add_argument("--window-requests", type=int, default=20, help="requests per stability window (count_windows)")
    ap.add_argument("--stability", type=int, default=20, help="allowed spread between windows, %% (default 20)")
    ap.add_argument("--max-trials", type=int, default=5, help="windows before a level counts as unstable")
    ap.add_argument("--request-count", type=int, default=0,
                    help="one measurement over this many requests per level, no stability search (--quick: 8)")
    ap.add_argument("--timeout", type=float, default=0,
                    help="seconds per perf_analyzer run before it is retried once (default 600, --quick 60)")
    pt.add_target_args(ap, "perf", "a few seconds per level (tests, smoke checks)")
    args = ap.parse_args(argv)

    concurrency = args.concurrency or ([1, 2] if args.quick else [1, 2, 4, 8])
    if any(c != int(c) for c in concurrency):
        ap.error(f"--concurrency levels are whole numbers of requests in flight, got {concurrency}")
    concurrency = [int(c) for c in concurrency]
    fractions = args.rate_fractions or ([0.5] if args.quick else [0.25, 0.5, 0.75, 1.0])
    request_count = args.request_count or (8 if args.quick else 0)
    timeout = args.timeout or (60 if args.quick else 600)
    settings = Settings(request_count, args.window_requests, args.stability, args.max_trials, args.distribution,
                        timeout)
    try:
        pa_version = pt.perf_analyzer_version()
        samples = pt.sample_images(args.images)
    except (pt.PerfToolError, InputError) as e:
        print(f"perf: {e}", file=sys.stderr)
        return 2
    if args.quick and not args.images:
        samples = pt.spread(samples, 3)

    out = pt.run_dir("perf", args.runs_dir)
    raw = out / "raw"
    raw.mkdir()
    data = pt.write_input_data(samples, out / "input_data.json")
    print(f"perf: results -> {out}", flush=True)
    print(f"perf: {pa_version}; input data: {len(samples)} real photos "
          f"({', '.join(f'{s.name} {s.size}' for s in samples)})", flush=True)

    levels: list[Level] = []
    failures: list[str] = []
    t0 = time.monotonic()
    try:
        with pt.target(args.url, args.repo, out / "tritonserver.log", "perf") as tgt:
            url = tgt.url
            server = pt.server_info(tgt)
            loaded = [*server["variants"], spec.ALIAS]
            models = [m for m in (args.model.split(",") if args.model else server["variants"]) if m]
            unknown = [m for m in models if m not in loaded]
            if unknown or not models:
                print(f"perf: not loaded on {url}: {', '.join(unknown) or '(none)'}; loaded: {', '.join(loaded)}",
                      file=sys.stderr)
                return 2
            print(f"perf: measuring {', '.join(models)} on {url}"
                  + (f" ({spec.ALIAS} -> {server['alias']})" if server.get("alias") else ""), flush=True)
            runner = Runner(url, data, raw, settings, server.get("alias"))
            try:
                for model in models:
                    print(f"perf: {model}: warming up ({len(samples)} photos)", flush=True)
                    warm_up(url, model, samples)
                    peak = 0.0
                    plan = [("concurrency", c) for c in concurrency]
                    for mode, load in plan:
                        peak = max(peak, _run(runner, model, mode, load, levels, failures))
                    if args.no_request_rate:
                        continue
                    rates = args.request_rate or sorted({max(0.1, round(f * peak, 2)) for f in fractions} if peak
                                                        else set())
                    if not rates:
                        failures.append(f"{model}: no rate sweep (the concurrency sweep measured no throughput)")
                    for r in rates:
                        _run(runner, model, "request_rate", r, levels, failures)
            finally:
                commands = runner.commands
                runner.close()
    except (LaunchError, pt.PerfToolError, ServerError, InputError) as e:
        print(f"perf: {e}", file=sys.stderr)
        return 2

    pt.write_csv(out / "latency.csv", [lv.row for lv in levels], LATENCY_COLUMNS)
    pt.write_csv(out / "stages.csv", [s for lv in levels for s in lv.stages], STAGE_COLUMNS)
    meta = {
        "server": server,
        "perf_analyzer": pa_version,
        "images": [(s.name, s.size) for s in samples],
        "settings": {"concurrency": concurrency, "rate_fractions": None if args.request_rate else fractions,
                     "request_rate": args.request_rate, "request_count": request_count,
                     "window_requests": args.window_requests, "stability_pct": args.stability,
                     "max_trials": args.max_trials, "distribution": args.distribution, "quick": args.quick,
                     "rate_sweep": not args.no_request_rate},
        "perf_analyzer_commands": commands,
        "failures": failures,
    }
    (out / "summary.md").write_text(summary(levels, meta))
    pt.write_meta(out, "perf", meta)
    print(f"perf: {len(levels)} levels measured in {time.monotonic() - t0:.0f}s; "
          f"latency.csv, stages.csv, summary.md in {out}", flush=True)
    for f in failures:
        print(f"perf: FAILED {f}", file=sys.stderr)
    return 1 if failures or not levels else 0


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


if __name__ == "__main__":
    sys.exit(main())
