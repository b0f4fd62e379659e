"""The sweep's summary.md: per variant its latency table and where the time goes at each load
level, and, with several variants, which one wins at each level.

Kept apart from the sweep's measuring so that what a run found reads the same whichever way
its levels were measured (perf_analyzer's per-composing-model CSVs, Triton's statistics, or a
fused model's stage metrics).
"""

from __future__ import annotations

from typing import Protocol

from yolo_triton import spec
from yolo_triton.perf import stages
from yolo_triton.perf.tables import markdown_table

LATENCY_COLUMNS = [
    "model", "mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms",
    "client_send_ms", "network_ms", "server_queue_ms", "server_compute_input_ms", "server_compute_infer_ms",
    "server_compute_output_ms", "client_recv_ms", "delayed_pct", "stable",
]
STAGE_COLUMNS = ["model", "mode", "load", *[c for c in stages.COLUMNS if c not in ("requests", "batch")]]


class Measured(Protocol):
    """A measured level (sweep.Level)."""

    model: str
    mode: str
    load: float
    row: dict
    stages: list[dict]


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


def _where_time_goes(mine: list[Measured]) -> str:
    rows = []
    for lv in mine:
        row: dict = {"mode": lv.mode, "load": f"{lv.load:g}", "client avg": lv.row["avg_ms"]}
        for s in lv.stages:
            compute = s["compute_input_ms"] + s["compute_infer_ms"] + s["compute_output_ms"]
            row[s["stage"]] = f"{s['queue_ms']:.1f} + {compute:.1f}"
        rows.append(row)
    present = [k for k in stages.ORDER if k in spec.STAGES or any(k in r for r in rows)]
    return markdown_table(rows, ["mode", "load", *present, "client avg"], 1)


def _best(levels: list[Measured]) -> str:
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
    return markdown_table(rows, ["mode", "load", "most throughput", "lowest p95"])


def summary(levels: list[Measured], meta: dict) -> str:
    out = ["# perf_analyzer sweep", ""]
    info = meta["server"]
    out += [f"- server: tritonserver {info.get('tritonserver')} at {info.get('url')}"
            + (f" (`{spec.ALIAS}` -> `{info['alias']}`)" if info.get("alias") else ""),
            f"- images: {', '.join(f'{n} ({sz})' for n, sz in meta['images'])}",
            f"- settings: {settings_text(meta['settings'])}",
            *([f"- not served: {'; '.join(f'{k}: {v}' for k, v in info['skipped'].items())}"]
              if info.get("skipped") else []), ""]
    models = list(dict.fromkeys(lv.model for lv in levels))
    for model in models:
        mine = [lv for lv in levels if lv.model == model]
        out += [f"## {model}", "", "### Latency and throughput (ms, infer/s)", ""]
        out.append(markdown_table([{**lv.row, "load": f"{lv.load:g}"} for lv in mine],
                                  ["mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms",
                                   "delayed_pct", "stable"], 2))
        out += ["", "### Where the time goes (ms per request: queue + compute input/infer/output)", "",
                _where_time_goes(mine), ""]
        if any(s["stage"] == stages.WHOLE for lv in mine for s in lv.stages):
            out += [f"`{stages.WHOLE}`: a fused model that published no stage metrics (one figure for all three "
                    "stages).", ""]
    if len(models) > 1:
        out += ["## Best variant per load level", "", _best(levels), ""]
    return "\n".join(out)
