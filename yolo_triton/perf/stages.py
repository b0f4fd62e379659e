"""Where a request's time goes inside the server, stage by stage (spec.STAGES), for any variant.

A staged ensemble has one model per stage (preprocess, the detector running the network,
postprocess), so each stage's time is that model's queue and compute from Triton's statistics
(or perf_analyzer's per-composing-model CSVs). A fused variant is one python model: its stage
metrics split its compute into the same three stages, and its queue and input/output handling go
to the first and last stage, where a staged ensemble has them too. The rest of its compute (the
stub round trip, reading inputs, building outputs) is a row of its own. Without metrics a fused
model is one `pipeline` row.

Every tool builds its stage table here, so the sweep, the Locust run, the comparison and the
report name and order stages alike.
"""

from __future__ import annotations

from yolo_triton import spec
from yolo_triton.perf import stats
from yolo_triton.perf.metrics import StageSplit

PRE, NETWORK, POST = spec.STAGES
GLUE = "pipeline glue"  # a fused model's compute outside its three stages
WHOLE = "pipeline"  # a fused model that publishes no stage times
ORDER = (*spec.STAGES, GLUE, WHOLE)
COLUMNS = ["stage", "composing_model", "requests", "batch", "queue_ms", "compute_input_ms", "compute_infer_ms",
           "compute_output_ms", "total_ms", "source"]


def _row(stage: str, st: stats.StageTime, source: str, **ms: float) -> dict:
    phases = {p: ms.get(p, st.ms[p]) for p in stats.PHASES}
    return {"stage": stage, "composing_model": st.model, "requests": st.count, "batch": st.batch,
            **{f"{p}_ms": v for p, v in phases.items()}, "total_ms": sum(phases.values()), "source": source}


def fused_rows(pipe: stats.StageTime, split: StageSplit, source: str) -> list[dict]:
    """A fused model's time as the staged ensemble's stages (see the module's docstring)."""
    stage_ms = split.ms
    source = f"{source} + stage metrics"
    q = pipe.ms
    zero = dict.fromkeys(stats.PHASES, 0.0)
    return [
        _row(PRE, pipe, source, **{**zero, "queue": q["queue"], "compute_input": q["compute_input"],
                                   "compute_infer": stage_ms[PRE]}),
        _row(NETWORK, pipe, source, **{**zero, "compute_infer": stage_ms[NETWORK]}),
        _row(POST, pipe, source, **{**zero, "compute_infer": stage_ms[POST], "compute_output": q["compute_output"]}),
        _row(GLUE, pipe, source, **{**zero, "compute_infer": max(q["compute_infer"] - sum(stage_ms.values()), 0.0)}),
    ]


def rows(variant: spec.Variant, times: dict[str, stats.StageTime], splits: dict[str, StageSplit],
         source: str) -> list[dict]:
    """One row per stage (mean ms per request), in ORDER; [] when the server counted none of them."""
    if not variant.fused:
        models = (variant.preprocess, variant.detector, variant.postprocess)
        out = [_row(stage, times[m], source) for m, stage in zip(models, spec.STAGES) if m in times]
    elif variant.pipeline not in times:
        out = []
    elif variant.pipeline in splits:
        out = fused_rows(times[variant.pipeline], splits[variant.pipeline], source)
    else:
        out = [_row(WHOLE, times[variant.pipeline], source)]
    return sorted(out, key=lambda r: ORDER.index(r["stage"]))


def by_stage(stage_rows: list[dict]) -> dict[str, float]:
    """Total ms of each of spec.STAGES, when the rows have all three (a staged or a split fused model)."""
    got = {r["stage"]: r["total_ms"] for r in stage_rows}
    return {s: got[s] for s in spec.STAGES} if all(s in got for s in spec.STAGES) else {}


def split_rows(split: StageSplit) -> list[dict]:
    """A stage split as lines of stats.table (requests = executions; ms per execution)."""
    zero = dict.fromkeys(stats.PHASES, 0.0)
    batch = split.images / split.executions
    return [{"model": f"{split.model}:{stage}", "requests": split.executions, "batch": batch,
             **{**zero, "compute_infer": ms}, "total": ms} for stage, ms in split.ms.items()]
