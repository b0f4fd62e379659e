"""Per-stage server time from Triton's statistics API.

Statistics are cumulative since load, so a measurement takes a snapshot before and after and
reports the difference: what the stages spent on exactly the requests in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class StageTime:
    model: str
    count: int  # requests (inferences) the model served
    executions: int  # execute() calls: count / executions is the mean batch size
    ms: dict[str, float]  # mean per request, by phase
    request_ms: float = 0.0  # mean whole stay in the server per request (an ensemble: its steps and the hops)

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())

    @property
    def batch(self) -> float:
        return self.count / self.executions if self.executions else 0.0


def snapshot(stats_json: dict) -> dict[str, dict]:
    """{model: {'count', 'executions', 'ns', phase: ns}} from get_inference_statistics(as_json=True);
    'ns' is the successful requests' whole time in the server."""
    out: dict[str, dict] = {}
    for m in stats_json.get("model_stats", []):
        inf = m.get("inference_stats", {})
        success = inf.get("success", {})
        entry = {"count": int(success.get("count", 0)), "executions": int(m.get("execution_count", 0)),
                 "ns": int(success.get("ns", 0))}
        for p in PHASES:
            entry[p] = int(inf.get(p, {}).get("ns", 0))
        out[m["name"]] = entry
    return out


def diff(before: dict[str, dict], after: dict[str, dict], models: Sequence[str] | None = None) -> list[StageTime]:
    """Per-model time between two snapshots, for `models` (None: every model; [] : none)."""
    rows = []
    for name in sorted(after) if models is None else models:
        a, b = after.get(name), before.get(name, {})
        if a is None:
            continue
        count = a["count"] - b.get("count", 0)
        if count <= 0:
            continue
        execs = a["executions"] - b.get("executions", 0)
        ms = {p: (a[p] - b.get(p, 0)) / count / 1e6 for p in PHASES}
        rows.append(StageTime(name, count, execs, ms, (a.get("ns", 0) - b.get("ns", 0)) / count / 1e6))
    return rows


def as_row(st: StageTime) -> dict:
    """A StageTime as one line of `table` (and of a tool's JSON results)."""
    return {"model": st.model, "requests": st.count, "batch": st.batch, **st.ms, "total": st.total_ms}


def table(rows: Sequence[StageTime | dict]) -> str:
    """Fixed-width text: model, requests, mean batch, ms per phase and in all (mean per request)."""
    head = f"{'model':<20}{'requests':>9}{'batch':>7}" + "".join(f"{p:>16}" for p in PHASES) + f"{'total ms':>10}"
    lines = [head]
    for r in rows:
        d = as_row(r) if isinstance(r, StageTime) else r
        phases = "".join(f"{d[p]:>16.3f}" for p in PHASES)
        lines.append(f"{d['model']:<20}{d['requests']:>9}{d['batch']:>7.1f}{phases}{d['total']:>10.3f}")
    return "\n".join(lines)
