"""The report's PNG plots: latency and throughput against the load, where a request's time goes
per variant and load, the comparison's stage bars, and the stage shares under the Locust load.

Files only (matplotlib's Agg backend): the report is made on servers and in CI, with no display.
A fused variant's bars come from its stage metrics (its three stages and the pipeline glue);
a run without them shows its one `pipeline` bar, not `other` (the client-side rest).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from yolo_triton.perf.stages import GLUE, WHOLE  # noqa: E402
from yolo_triton.spec import STAGES  # noqa: E402

COLORS = {"preprocess": "#4c72b0", "network": "#dd8452", "postprocess": "#55a868", "queue": "#f2b880",
          "preprocess queue": "#9fb6dc", "network queue": "#f2b880", "postprocess queue": "#a6d3b0",
          "pipeline glue": "#8172b3", "pipeline": "#937860", "other": "#b0b0b0", "inference": "#dd8452"}


def num(v: object) -> float:
    """A CSV cell as a number (0 for a blank or a word)."""
    return float(v) if isinstance(v, (int, float)) else 0.0


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _axes(ax, xlabel: str, ylabel: str, title: str, integer_x: bool) -> None:  # noqa: ANN001 - matplotlib Axes
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _stacked(ax, labels: list[str], parts: dict[str, list[float]]) -> None:  # noqa: ANN001 - matplotlib Axes
    bottom = [0.0] * len(labels)
    for k, vals in parts.items():
        ax.bar(labels, vals, bottom=bottom, color=COLORS[k], label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]


def plot_vs_load(latency: list[dict], mode: str, out: Path) -> list[Path]:
    """Latency percentiles and throughput against the load, one line per variant."""
    rows = [r for r in latency if r["mode"] == mode]
    if not rows:
        return []
    models = list(dict.fromkeys(r["model"] for r in rows))
    xlabel = "concurrency (requests in flight)" if mode == "concurrency" else "offered request rate (req/s)"
    name = "concurrency" if mode == "concurrency" else "request_rate"
    per_model = {m: sorted((r for r in rows if r["model"] == m), key=lambda r: num(r["load"])) for m in models}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (m, mine) in enumerate(per_model.items()):
        x = [num(r["load"]) for r in mine]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", ":")):
            ax.plot(x, [num(r[key]) for r in mine], style, color=f"C{i}", label=f"{m} {key[:3]}")
    _axes(ax, xlabel, "latency (ms)", f"Latency vs {name.replace('_', ' ')}", mode == "concurrency")
    paths = [_save(fig, out / f"latency_vs_{name}.png")]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (m, mine) in enumerate(per_model.items()):
        ax.plot([num(r["load"]) for r in mine], [num(r["throughput"]) for r in mine], "o-", color=f"C{i}", label=m)
    if mode == "request_rate":
        top = max(num(r["load"]) for r in rows)
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="offered = served")
    _axes(ax, xlabel, "throughput (infer/s)", f"Throughput vs {name.replace('_', ' ')}", mode == "concurrency")
    paths.append(_save(fig, out / f"throughput_vs_{name}.png"))
    return paths


def plot_perf_stages(latency: list[dict], stages: list[dict], out: Path) -> Path | None:
    """Where a request's time goes at each concurrency, per variant: the stages' compute, their
    queues together (what load adds; a fused model's is in front of all three stages), and the
    rest of the client's latency."""
    rows = [r for r in latency if r["mode"] == "concurrency"]
    if not rows:
        return None
    inside = (*STAGES, GLUE, WHOLE)  # what the server accounts for, a fused model's glue and whole included
    labels, parts = [], {k: [] for k in ("queue", *inside, "other")}
    for r in rows:
        mine = {s["stage"]: s for s in stages if s["model"] == r["model"] and s["mode"] == "concurrency"
                and num(s["load"]) == num(r["load"])}
        labels.append(f"{r['model']}\nc={num(r['load']):g}")
        values = {k: num(mine.get(k, {}).get("total_ms")) - num(mine.get(k, {}).get("queue_ms")) for k in inside}
        values["queue"] = sum(num(mine.get(k, {}).get("queue_ms")) for k in inside)
        values["other"] = max(num(r["avg_ms"]) - sum(values.values()), 0.0)
        for k, v in values.items():
            parts[k].append(v)
    parts = {k: v for k, v in parts.items() if any(v) or k in STAGES}  # no empty legend entries
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.5))
    _stacked(ax, labels, parts)
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
    _stacked(ax, names, {k: [num(r[f"{k}_ms"]) for r in rows] for k in ("preprocess", "inference", "postprocess")})
    ax.scatter(names, [num(r["end_to_end_ms"]) for r in rows], marker="_", s=900, color="black", zorder=3,
               label="end-to-end (median)")
    ax.set_ylabel("ms per image")
    ax.set_title("Per-stage time: Ultralytics predict vs served ensembles")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _save(fig, out / "stages_per_variant.png")


def plot_locust_shares(stages: list[dict], out: Path) -> Path | None:
    """Each stage's share of the client's mean latency under load; a stage's queue (waiting for a
    free instance) is shown apart from its compute, since that is what load adds."""
    parts: list[tuple[str, float]] = []
    for s in stages:
        total, share = num(s.get("total_ms")), num(s.get("share_of_client_pct"))
        if s.get("stage") == "client mean latency" or total <= 0:
            continue
        if num(s.get("queue_ms")) > 0:
            queue = share * num(s["queue_ms"]) / total
            parts += [(str(s["stage"]), share - queue), (f"{s['stage']} queue", queue)]
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
