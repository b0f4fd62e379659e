"""One Markdown report, with plots, from the latest perf, Locust and comparison runs.

    python perf/report.py [--runs-dir runs] [--out runs/report]

Reads the newest finished run under runs/perf, runs/locust and runs/compare (or the folders
given with --perf/--locust/--compare) and writes report.md and PNG plots: per-stage time per
variant, latency and throughput against concurrency, latency against request rate, and each
stage's share of the latency under the Locust load. The machine, the versions and the exact
command lines of each run are recorded. A missing run is named with the command that makes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from yolo_triton.perf import tools as pt  # noqa: E402

STAGES = ("preprocess", "detector", "postprocess")
COLORS = {"preprocess": "#4c72b0", "detector": "#dd8452", "detector queue": "#f2b880", "postprocess": "#55a868",
          "other": "#b0b0b0", "inference": "#dd8452"}
MAKERS = {"perf": "make perf", "locust": "make locust", "compare": "make compare"}
SCRIPTS = {"perf": "perf/perf_sweep.py", "locust": "perf/locust_run.py", "compare": "perf/compare.py"}


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


# --- plots --------------------------------------------------------------------------------------


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_vs_load(latency: list[dict], mode: str, out: Path) -> list[Path]:
    """Latency percentiles and throughput against the load, one line per variant."""
    rows = [r for r in latency if r["mode"] == mode]
    if not rows:
        return []
    models = list(dict.fromkeys(r["model"] for r in rows))
    xlabel = "concurrency (requests in flight)" if mode == "concurrency" else "offered request rate (req/s)"
    name = "concurrency" if mode == "concurrency" else "request_rate"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, m in enumerate(models):
        mine = sorted((r for r in rows if r["model"] == m), key=lambda r: _num(r["load"]))
        x = [_num(r["load"]) for r in mine]
        color = f"C{i}"
        ax.plot(x, [_num(r["p50_ms"]) for r in mine], "o-", color=color, label=f"{m} p50")
        ax.plot(x, [_num(r["p95_ms"]) for r in mine], "s--", color=color, label=f"{m} p95")
        ax.plot(x, [_num(r["p99_ms"]) for r in mine], ":", color=color, label=f"{m} p99")
    if mode == "concurrency":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"Latency vs {name.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths = [_save(fig, out / f"latency_vs_{name}.png")]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, m in enumerate(models):
        mine = sorted((r for r in rows if r["model"] == m), key=lambda r: _num(r["load"]))
        ax.plot([_num(r["load"]) for r in mine], [_num(r["throughput"]) for r in mine], "o-", color=f"C{i}", label=m)
    if mode == "request_rate":
        top = max(_num(r["load"]) for r in rows)
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="offered = served")
    if mode == "concurrency":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("throughput (infer/s)")
    ax.set_title(f"Throughput vs {name.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / f"throughput_vs_{name}.png"))
    return paths


def plot_perf_stages(latency: list[dict], stages: list[dict], out: Path) -> Path | None:
    """Where a request's time goes at each concurrency, per variant: the stages' compute, the
    detector's queue (what load adds), and the rest of the client's latency."""
    rows = [r for r in latency if r["mode"] == "concurrency"]
    if not rows:
        return None
    labels, parts = [], {k: [] for k in ("preprocess", "detector", "detector queue", "postprocess", "other")}
    for r in rows:
        mine = {s["stage"]: s for s in stages if s["model"] == r["model"] and s["mode"] == "concurrency"
                and _num(s["load"]) == _num(r["load"])}
        labels.append(f"{r['model']}\nc={_num(r['load']):g}")
        det = mine.get("detector", {})
        values = {
            "preprocess": _num(mine.get("preprocess", {}).get("total_ms")),
            "detector": _num(det.get("total_ms")) - _num(det.get("queue_ms")),
            "detector queue": _num(det.get("queue_ms")),
            "postprocess": _num(mine.get("postprocess", {}).get("total_ms")),
        }
        values["other"] = max(_num(r["avg_ms"]) - sum(values.values()), 0.0)
        for k, v in values.items():
            parts[k].append(v)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.5))
    bottom = [0.0] * len(labels)
    for k, vals in parts.items():
        ax.bar(labels, vals, bottom=bottom, color=COLORS[k], label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("mean ms per request")
    ax.set_title("Where the time goes, by variant and concurrency (perf_analyzer)")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig, out / "stages_vs_concurrency.png")


def plot_compare_stages(rows: list[dict], out: Path) -> Path | None:
    """Per-stage bars per model/variant: Ultralytics' YOLOv8n and YOLOv5n next to each served variant."""
    if not rows:
        return None
    names = [f"{r['name']}\n({r['kind']})" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows) + 2), 4.5))
    bottom = [0.0] * len(rows)
    for key, label in (("preprocess_ms", "preprocess"), ("inference_ms", "inference"),
                       ("postprocess_ms", "postprocess")):
        vals = [_num(r[key]) for r in rows]
        ax.bar(names, vals, bottom=bottom, color=COLORS[label], label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.scatter(names, [_num(r["end_to_end_ms"]) for r in rows], marker="_", s=900, color="black", zorder=3,
               label="end-to-end (median)")
    ax.set_ylabel("ms per image")
    ax.set_title("Per-stage time: Ultralytics predict vs served ensembles")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _save(fig, out / "stages_per_variant.png")


def plot_locust_shares(stages: list[dict], out: Path) -> Path | None:
    """Each stage's share of the client's mean latency under load; the detector's queue (waiting
    for a free instance) is shown apart from its compute, since that is what load adds."""
    parts: list[tuple[str, float]] = []
    for s in stages:
        total, share = _num(s.get("total_ms")), _num(s.get("share_of_client_pct"))
        if s.get("stage") == "client mean latency" or total <= 0:
            continue
        if s.get("stage") == "detector" and _num(s.get("queue_ms")) > 0:
            queue = share * _num(s["queue_ms"]) / total
            parts += [("detector", share - queue), ("detector queue", queue)]
        else:
            parts.append((str(s["stage"]), share))
    if not parts:
        return None
    fig, ax = plt.subplots(figsize=(8, 2.6))
    left = 0.0
    for i, (stage, share) in enumerate(parts):
        ax.barh([0], [share], left=left, color=COLORS.get(stage, f"C{i + 4}"), label=f"{stage} {share:.1f}%")
        left += share
    ax.set_xlim(0, max(100.0, left))
    ax.set_yticks([])
    ax.set_xlabel("% of the client's mean latency under the Locust load")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return _save(fig, out / "locust_stage_shares.png")


# --- sections -----------------------------------------------------------------------------------


def _missing(kind: str) -> list[str]:
    return [f"_No finished {kind} run found: run `{MAKERS[kind]}` (or `python {SCRIPTS[kind]}`) first._", ""]


def glance(perf: Path | None, locust: Path | None, compare: Path | None) -> list[str]:
    out = ["## At a glance", ""]
    if perf:
        latency = pt.read_csv(perf / "latency.csv")
        stages = pt.read_csv(perf / "stages.csv")
        rows = []
        for mode in ("concurrency", "request_rate"):
            for load in sorted({_num(r["load"]) for r in latency if r["mode"] == mode}):
                here = [r for r in latency if r["mode"] == mode and _num(r["load"]) == load]
                best_t = max(here, key=lambda r: _num(r["throughput"]))
                best_p = min(here, key=lambda r: _num(r["p95_ms"]))
                rows.append({"load": f"{'c' if mode == 'concurrency' else 'rate '}{load:g}",
                             "most throughput": f"{best_t['model']} ({_num(best_t['throughput']):.2f}/s)",
                             "lowest p95": f"{best_p['model']} ({_num(best_p['p95_ms']):.0f} ms)",
                             "variants measured": len(here)})
        out += ["Which variant wins at which load (perf_analyzer):", "",
                pt.markdown_table(rows, ["load", "most throughput", "lowest p95", "variants measured"]), ""]
        for model in dict.fromkeys(r["model"] for r in latency):
            mine = sorted((r for r in latency if r["model"] == model and r["mode"] == "concurrency"),
                          key=lambda r: _num(r["load"]))
            if not mine:
                continue
            peak = max(mine, key=lambda r: _num(r["throughput"]))
            lines = []
            for r in (mine[0], mine[-1]) if len(mine) > 1 else (mine[0],):
                st = {s["stage"]: s for s in stages if s["model"] == model and s["mode"] == "concurrency"
                      and _num(s["load"]) == _num(r["load"])}
                total = _num(r["avg_ms"]) or 1.0
                det = st.get("detector", {})
                lines.append(
                    f"at concurrency {_num(r['load']):g}: detector compute "
                    f"{100 * (_num(det.get('total_ms')) - _num(det.get('queue_ms'))) / total:.0f}%, detector queue "
                    f"{100 * _num(det.get('queue_ms')) / total:.0f}%, preprocess "
                    f"{100 * _num(st.get('preprocess', {}).get('total_ms')) / total:.0f}%, postprocess "
                    f"{100 * _num(st.get('postprocess', {}).get('total_ms')) / total:.0f}% of "
                    f"{total:.0f} ms")
            out.append(f"- **{model}**: peak {_num(peak['throughput']):.2f} infer/s at concurrency "
                       f"{_num(peak['load']):g}; p50 {_num(mine[0]['p50_ms']):.0f} ms alone. Time goes: "
                       + "; ".join(lines) + ".")
        out.append("")
    if locust:
        meta = pt.read_meta(locust)
        st = pt.read_csv(locust / "stages.csv")
        biggest = max((s for s in st if s["stage"] != "client mean latency"), key=lambda s: _num(s["total_ms"]),
                      default=None)
        if biggest:
            queue = f", of which queue {_num(biggest['queue_ms']):.0f} ms" if _num(biggest.get("queue_ms")) else ""
            out.append(f"- Under Locust ({meta['settings']['users']} users on {meta['model']}): {meta['requests']} "
                       f"requests, {meta['failures']} failures; the largest share of the client's mean latency is "
                       f"{biggest['stage']} ({_num(biggest['share_of_client_pct']):.0f}%, "
                       f"{_num(biggest['total_ms']):.0f} ms{queue}).")
    if compare:
        data = json.loads((compare / "compare.json").read_text())
        by = {r["name"]: r for r in data["rows"]}
        v8, v5 = by.get("YOLOv8n"), by.get("YOLOv5n")
        if v8 and v5 and v8["inference_ms"]:
            out.append(f"- YOLOv5n vs YOLOv8n (Ultralytics, same photos): inference "
                       f"{v5['inference_ms'] / v8['inference_ms']:.2f}x, {v5['params_m']:.2f} M vs "
                       f"{v8['params_m']:.2f} M params, {v5['gflops']:.1f} vs {v8['gflops']:.1f} GFLOPs"
                       + ("" if all(data.get("pretrained", {}).values()) else " (seeded random weights)") + ".")
        for r in data["rows"]:
            if r["kind"] == "served" and v8:
                out.append(f"- Served {r['name']} end-to-end {r['end_to_end_ms']:.0f} ms vs Ultralytics YOLOv8n "
                           f"predict {v8['end_to_end_ms']:.0f} ms ({r['end_to_end_ms'] / v8['end_to_end_ms']:.2f}x).")
    out.append("")
    return out


def perf_section(run: Path | None, out: Path) -> list[str]:
    lines = ["## 1. perf_analyzer sweeps", ""]
    if run is None:
        return lines + _missing("perf")
    meta = pt.read_meta(run)
    latency = pt.read_csv(run / "latency.csv")
    stages = pt.read_csv(run / "stages.csv")
    lines += [f"Run: `{_rel(run, out)}` ({meta.get('finished')}); {meta.get('perf_analyzer')}; photos: "
              + ", ".join(f"{n} ({s})" for n, s in meta.get("images", [])), ""]
    plots = plot_vs_load(latency, "concurrency", out) + plot_vs_load(latency, "request_rate", out)
    st_plot = plot_perf_stages(latency, stages, out)
    for p in plots + ([st_plot] if st_plot else []):
        lines += [f"![{p.stem}]({p.name})", ""]
    table = [{**r, "load": f"{_num(r['load']):g}"} for r in latency]
    lines += ["### Latency (ms) and throughput (infer/s)", "",
              pt.markdown_table(table, ["model", "mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                                        "avg_ms", "stable"], 1), ""]
    rows = []
    for s in stages:
        rows.append({**s, "load": f"{_num(s['load']):g}"})
    lines += ["### Per composing model (mean ms per request)", "",
              pt.markdown_table(rows, ["model", "mode", "load", "composing_model", "queue_ms", "compute_input_ms",
                                       "compute_infer_ms", "compute_output_ms", "total_ms"], 2), ""]
    if meta.get("failures"):
        lines += ["Levels that failed:", "", *[f"- {f}" for f in meta["failures"]], ""]
    return lines


def locust_section(run: Path | None, out: Path) -> list[str]:
    lines = ["## 2. Locust load test (gRPC)", ""]
    if run is None:
        return lines + _missing("locust")
    meta = pt.read_meta(run)
    text = (run / "summary.md").read_text().split("\n", 1)[1].replace("\n## ", "\n### ")
    text = text.replace("report: locust.html", f"report: [{_rel(run / 'locust.html', out)}]"
                                               f"({_rel(run / 'locust.html', out)})")
    lines += [f"Run: `{_rel(run, out)}` ({meta.get('finished')}).", text.strip(), ""]
    p = plot_locust_shares(pt.read_csv(run / "stages.csv"), out)
    if p:
        lines += [f"![{p.stem}]({p.name})", ""]
    return lines


def compare_section(run: Path | None, out: Path) -> list[str]:
    lines = ["## 3. YOLOv8n vs YOLOv5n, and the served variants", ""]
    if run is None:
        return lines + _missing("compare")
    meta = pt.read_meta(run)
    data = json.loads((run / "compare.json").read_text())
    text = (run / "compare.md").read_text().split("\n", 1)[1]
    lines += [f"Run: `{_rel(run, out)}` ({meta.get('finished')}).", text.strip(), ""]
    p = plot_compare_stages(data["rows"], out)
    if p:
        lines += [f"![{p.stem}]({p.name})", ""]
    return lines


def environment_section(runs: dict[str, Path | None]) -> list[str]:
    lines = ["## Machine, versions and command lines", ""]
    metas = {k: pt.read_meta(v) for k, v in runs.items() if v}
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
    for pkg in pt.VERSIONED_PACKAGES:
        add(pkg, lambda m, pkg=pkg: m.get("versions", {}).get(pkg, ""))
    lines += [pt.markdown_table(rows, ["", *keys]), "", "The machine is shown as each run saw it; the load "
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
    ap.add_argument("--runs-dir", type=Path, default=pt.RUNS, help="where perf/, locust/, compare/ runs are")
    ap.add_argument("--perf", type=Path, help="a perf run folder (default: the latest)")
    ap.add_argument("--locust", type=Path, help="a locust run folder (default: the latest)")
    ap.add_argument("--compare", type=Path, help="a compare run folder (default: the latest)")
    ap.add_argument("--out", type=Path, help="output folder (default RUNS_DIR/report)")
    args = ap.parse_args(argv)
    out = args.out or args.runs_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    runs = {k: getattr(args, k) or pt.latest_run(k, args.runs_dir) for k in ("perf", "locust", "compare")}
    for k, v in runs.items():
        if v is not None and not (v / pt.META_FILE).is_file():
            print(f"report: {v} is not a finished {k} run (no {pt.META_FILE})", file=sys.stderr)
            return 2
        print(f"report: {k}: {v if v else 'none found (run ' + MAKERS[k] + ')'}", flush=True)

    lines = ["# YOLOv8n on Triton: performance report", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `perf/report.py` from the latest runs. "
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
