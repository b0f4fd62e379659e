"""One Markdown report, with plots, from the latest perf, Locust and comparison runs.

    yolo-triton report [--runs-dir runs] [--out runs/report]

Reads the newest finished run under runs/perf, runs/locust and runs/compare (or the folders
given with --perf/--locust/--compare) and writes report.md and PNG plots: per-stage time per
variant (a fused variant's from its stage metrics, when it published them), latency and
throughput against concurrency, latency against request rate, and each stage's share of the
latency under the Locust load. The machine, the versions and the exact command lines of each
run are recorded. A missing run is named with the command that makes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from yolo_triton.paths import RUNS
from yolo_triton.perf.plots import (
    num,
    plot_compare_stages,
    plot_locust_shares,
    plot_perf_stages,
    plot_vs_load,
)
from yolo_triton.perf.runs import META_FILE, VERSIONED_PACKAGES, latest_run, read_meta
from yolo_triton.perf.stages import GLUE, WHOLE
from yolo_triton.perf.tables import markdown_table, read_csv

MAKERS = {"perf": "make perf", "locust": "make locust", "compare": "make compare"}
MODULES = {"perf": "yolo_triton.perf.sweep", "locust": "yolo_triton.perf.locust", "compare": "yolo_triton.perf.compare"}


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _missing(kind: str) -> list[str]:
    return [f"_No finished {kind} run found: run `{MAKERS[kind]}` (or `python -m {MODULES[kind]}`) first._", ""]


def _time_goes(stages: list[dict], r: dict) -> str:
    """One level's time as shares of the client's mean latency, stage by stage."""
    st = {s["stage"]: s for s in stages if s["model"] == r["model"] and s["mode"] == "concurrency"
          and num(s["load"]) == num(r["load"])}
    total = num(r["avg_ms"]) or 1.0
    if "network" not in st:
        return (f"at concurrency {num(r['load']):g}: one fused model that published no stage metrics in this run, "
                f"{num(st.get(WHOLE, {}).get('total_ms')):.0f} ms in it of {total:.0f} ms")

    def pct(ms: float) -> str:
        return f"{100 * ms / total:.0f}%"

    compute = {k: num(st[k]["total_ms"]) - num(st[k]["queue_ms"]) for k in ("preprocess", "network", "postprocess")
               if k in st}
    queue = sum(num(s["queue_ms"]) for s in st.values())
    glue = f", pipeline glue {pct(num(st[GLUE]['total_ms']))}" if GLUE in st else ""
    return (f"at concurrency {num(r['load']):g}: network compute {pct(compute['network'])}, queues {pct(queue)}, "
            f"preprocess {pct(compute.get('preprocess', 0.0))}, postprocess {pct(compute.get('postprocess', 0.0))}"
            f"{glue} of {total:.0f} ms")


def _glance_perf(perf: Path) -> list[str]:
    latency = read_csv(perf / "latency.csv")
    stages = read_csv(perf / "stages.csv")
    rows = []
    for mode in ("concurrency", "request_rate"):
        for load in sorted({num(r["load"]) for r in latency if r["mode"] == mode}):
            here = [r for r in latency if r["mode"] == mode and num(r["load"]) == load]
            best_t = max(here, key=lambda r: num(r["throughput"]))
            best_p = min(here, key=lambda r: num(r["p95_ms"]))
            alone = " (only one measured)" if len(here) == 1 else ""  # nothing to win against
            rows.append({"load": f"{'c' if mode == 'concurrency' else 'rate '}{load:g}",
                         "most throughput": f"{best_t['model']} ({num(best_t['throughput']):.2f}/s){alone}",
                         "lowest p95": f"{best_p['model']} ({num(best_p['p95_ms']):.0f} ms){alone}",
                         "variants measured": len(here)})
    out = ["Which variant is fastest at which load, among those measured at that load (perf_analyzer):", "",
           markdown_table(rows, ["load", "most throughput", "lowest p95", "variants measured"]), ""]
    for model in dict.fromkeys(r["model"] for r in latency):
        mine = sorted((r for r in latency if r["model"] == model and r["mode"] == "concurrency"),
                      key=lambda r: num(r["load"]))
        if not mine:
            continue
        peak = max(mine, key=lambda r: num(r["throughput"]))
        ends = (mine[0], mine[-1]) if len(mine) > 1 else (mine[0],)
        out.append(f"- **{model}**: peak {num(peak['throughput']):.2f} infer/s at concurrency "
                   f"{num(peak['load']):g}; p50 {num(mine[0]['p50_ms']):.0f} ms alone. Time goes: "
                   + "; ".join(_time_goes(stages, r) for r in ends) + ".")
    return [*out, ""]


def _glance_locust(locust: Path) -> list[str]:
    meta = read_meta(locust)
    st = read_csv(locust / "stages.csv")
    biggest = max((s for s in st if s["stage"] != "client mean latency"), key=lambda s: num(s["total_ms"]),
                  default=None)
    if not biggest:
        return []
    queue = f", of which queue {num(biggest['queue_ms']):.0f} ms" if num(biggest.get("queue_ms")) else ""
    return [f"- Under Locust ({meta['settings']['users']} users on {meta['model']}): {meta['requests']} "
            f"requests, {meta['failures']} failures; the largest share of the client's mean latency is "
            f"{biggest['stage']} ({num(biggest['share_of_client_pct']):.0f}%, "
            f"{num(biggest['total_ms']):.0f} ms{queue})."]


def _glance_compare(compare: Path) -> list[str]:
    data = json.loads((compare / "compare.json").read_text())
    by = {r["name"]: r for r in data["rows"]}
    v8, v5 = by.get("YOLOv8n"), by.get("YOLOv5n")
    out = []
    if v8 and v5 and v8["inference_ms"]:
        out.append(f"- YOLOv5n vs YOLOv8n (Ultralytics, same photos): inference "
                   f"{v5['inference_ms'] / v8['inference_ms']:.2f}x, {v5['params_m']:.2f} M vs "
                   f"{v8['params_m']:.2f} M params, {v5['gflops']:.1f} vs {v8['gflops']:.1f} GFLOPs"
                   + ("" if all(data.get("pretrained", {}).values()) else " (seeded random weights)") + ".")
    served = [r for r in data["rows"] if r["kind"] == "served"]
    if served and v8:
        out.append("- Served end-to-end (gRPC client, photo transfer included, square letterbox, the server's "
                   "threads; weights " + served[0]["weights"] + "): "
                   + ", ".join(f"{r['name']} {r['end_to_end_ms']:.0f} ms" for r in served)
                   + f". Ultralytics YOLOv8n predict in-process (stride-rect letterbox, torch "
                   f"{data.get('torch_threads', '?')} threads; {v8['weights']}): {v8['end_to_end_ms']:.0f} ms. "
                   "Different setups, so no ratio is drawn; `make bench-cpu` compares on one.")
    return out


def glance(perf: Path | None, locust: Path | None, compare: Path | None) -> list[str]:
    out = ["## At a glance", ""]
    out += _glance_perf(perf) if perf else []
    out += _glance_locust(locust) if locust else []
    out += _glance_compare(compare) if compare else []
    return [*out, ""]


def perf_section(run: Path | None, out: Path) -> list[str]:
    lines = ["## 1. perf_analyzer sweeps", ""]
    if run is None:
        return lines + _missing("perf")
    meta = read_meta(run)
    latency = read_csv(run / "latency.csv")
    stages = read_csv(run / "stages.csv")
    lines += [f"Run: `{_rel(run, out)}` ({meta.get('finished')}); {meta.get('perf_analyzer')}; photos: "
              + ", ".join(f"{n} ({s})" for n, s in meta.get("images", [])), ""]
    plots = plot_vs_load(latency, "concurrency", out) + plot_vs_load(latency, "request_rate", out)
    st_plot = plot_perf_stages(latency, stages, out)
    for p in plots + ([st_plot] if st_plot else []):
        lines += [f"![{p.stem}]({p.name})", ""]
    table = [{**r, "load": f"{num(r['load']):g}"} for r in latency]
    lines += ["### Latency (ms) and throughput (infer/s)", "",
              markdown_table(table, ["model", "mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                                     "avg_ms", "stable"], 1), ""]
    rows = [{**s, "load": f"{num(s['load']):g}"} for s in stages]
    lines += ["### Per stage (mean ms per request; a fused model's stages from its stage metrics)", "",
              markdown_table(rows, ["model", "mode", "load", "stage", "composing_model", "queue_ms",
                                    "compute_input_ms", "compute_infer_ms", "compute_output_ms", "total_ms"], 2), ""]
    if meta.get("failures"):
        lines += ["Levels that failed:", "", *[f"- {f}" for f in meta["failures"]], ""]
    return lines


def _embedded(title: str, kind: str, run: Path | None, out: Path, text_file: str) -> tuple[list[str], str]:
    """A section that shows a run's own Markdown summary: (its lines so far, that summary's text)."""
    lines = [title, ""]
    if run is None:
        return lines + _missing(kind), ""
    text = (run / text_file).read_text().split("\n", 1)[1]
    return lines + [f"Run: `{_rel(run, out)}` ({read_meta(run).get('finished')})."], text


def locust_section(run: Path | None, out: Path) -> list[str]:
    lines, text = _embedded("## 2. Locust load test (gRPC)", "locust", run, out, "summary.md")
    if run is None:
        return lines
    html = _rel(run / "locust.html", out)
    text = text.replace("\n## ", "\n### ").replace("report: locust.html", f"report: [{html}]({html})")
    p = plot_locust_shares(read_csv(run / "stages.csv"), out)
    return lines + [text.strip(), "", *([f"![{p.stem}]({p.name})", ""] if p else [])]


def compare_section(run: Path | None, out: Path) -> list[str]:
    lines, text = _embedded("## 3. YOLOv8n vs YOLOv5n, and the served variants", "compare", run, out, "compare.md")
    if run is None:
        return lines
    p = plot_compare_stages(json.loads((run / "compare.json").read_text())["rows"], out)
    return lines + [text.strip(), "", *([f"![{p.stem}]({p.name})", ""] if p else [])]


def environment_section(runs: dict[str, Path | None]) -> list[str]:
    lines = ["## Machine, versions and command lines", ""]
    metas = {k: read_meta(v) for k, v in runs.items() if v}
    if not metas:
        return lines + ["_No runs yet._", ""]
    keys = list(metas)
    rows = []

    def add(label: str, get) -> None:  # noqa: ANN001
        rows.append({"": label, **{k: get(m) for k, m in metas.items()}})

    add("finished", lambda m: m.get("finished", ""))
    add("CPU", lambda m: m["machine"].get("cpu", ""))
    add("cores", lambda m: m["machine"].get("cores", ""))
    add("RAM (GB)", lambda m: m["machine"].get("ram_gb", ""))
    add("GPUs", lambda m: ", ".join(m["machine"].get("gpus", [])) or "none")
    add("load average (1/5/15 min)", lambda m: " / ".join(str(x) for x in m["machine"].get("load_avg", [])))
    add("OS / Python", lambda m: f"{m['machine'].get('os', '')} / {m['machine'].get('python', '')}")
    add("tritonserver", lambda m: (m.get("server") or {}).get("tritonserver", ""))
    add("served variants", lambda m: ", ".join((m.get("server") or {}).get("variants", [])))
    add("not served", lambda m: "; ".join(f"{k}: {v}" for k, v in
                                          ((m.get("server") or {}).get("skipped") or {}).items()))
    if "perf" in metas:
        add("perf_analyzer", lambda m: m.get("perf_analyzer", ""))
    for pkg in VERSIONED_PACKAGES:
        add(pkg, lambda m, pkg=pkg: m.get("versions", {}).get(pkg, ""))
    lines += [markdown_table(rows, ["", *keys]), "", "The machine is shown as each run saw it; the load "
              "average tells how busy the CPU was (other work on a shared machine inflates the timings).", "",
              "Command lines:", "", "```"]
    for k, m in metas.items():
        lines.append(f"# {k}")
        lines.append(m.get("command", ""))
        for c in m.get("perf_analyzer_commands", [])[:50]:
            lines.append(c)
        if m.get("locust_command"):
            lines.append(m["locust_command"])
    lines += ["```", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, default=RUNS, help="where perf/, locust/, compare/ runs are")
    ap.add_argument("--perf", type=Path, help="a perf run folder (default: the latest)")
    ap.add_argument("--locust", type=Path, help="a locust run folder (default: the latest)")
    ap.add_argument("--compare", type=Path, help="a compare run folder (default: the latest)")
    ap.add_argument("--out", type=Path, help="output folder (default RUNS_DIR/report)")
    args = ap.parse_args(argv)
    out = args.out or args.runs_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    runs = {k: getattr(args, k) or latest_run(k, args.runs_dir) for k in ("perf", "locust", "compare")}
    for k, v in runs.items():
        if v is not None and not (v / META_FILE).is_file():
            print(f"report: {v} is not a finished {k} run (no {META_FILE})", file=sys.stderr)
            return 2
        print(f"report: {k}: {v if v else 'none found (run ' + MAKERS[k] + ')'}", flush=True)

    lines = ["# YOLOv8n on Triton: performance report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `yolo_triton.perf.report` from the latest runs. "
             "Regenerate with `make perf locust compare report`.", ""]
    lines += glance(runs["perf"], runs["locust"], runs["compare"])
    lines += perf_section(runs["perf"], out)
    lines += locust_section(runs["locust"], out)
    lines += compare_section(runs["compare"], out)
    lines += environment_section(runs)
    report = out / "report.md"
    report.write_text("\n".join(lines))
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(f"report: {report} with {len(pngs)} plots ({', '.join(pngs)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
