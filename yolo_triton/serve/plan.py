"""Which model variants a tritonserver can load here, and what `yolov8n` points at.

A variant loads only where its backend, its device and its artefact are present; every other one
is named with the reason. The aliases take the fastest loadable variant (spec.FASTEST_FIRST)
whose accuracy gate passed (repository.gate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yolo_triton import spec
from yolo_triton.repository import configs as repository
from yolo_triton.serve.install import LaunchError


@dataclass
class Plan:
    load: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    alias: spec.Variant | None = None
    network: spec.Variant | None = None  # the staged variant whose detector spec.NETWORK_ALIAS calls
    why: str = ""  # why `alias` was chosen, one line
    passed_over: dict[str, str] = field(default_factory=dict)  # faster loadable variants not chosen, and why


def plan_models(repo: Path, backends: set[str], gpu: bool, only: list[str] | None = None) -> Plan:
    """Which variants this server can load, and why each other one is skipped."""
    if not (repo / repository.FACTS_FILE).exists():
        raise LaunchError(f"no built model in {repo}: run `make build-engines` first")
    plan = Plan()
    loadable: list[spec.Variant] = []
    for v in spec.VARIANTS:
        if only and v.key not in only:
            continue
        missing = [n for n in v.needs if n != "gpu" and n not in backends]
        if "gpu" in v.needs and not gpu:
            plan.skipped[v.ensemble] = "needs a GPU, none visible"
        elif missing:
            plan.skipped[v.ensemble] = f"this tritonserver has no {'/'.join(missing)} backend"
        elif why := _unservable(repo, v):
            plan.skipped[v.ensemble] = why
        else:
            for m in v.models:
                if m not in plan.load:
                    plan.load.append(m)
            loadable.append(v)
    if not loadable:
        raise LaunchError("no variant can be served here: " + "; ".join(f"{k}: {r}" for k, r in plan.skipped.items()))
    _choose_alias(plan, repo, loadable)
    plan.load.append(spec.ALIAS)
    if plan.network is None:
        plan.skipped[spec.NETWORK_ALIAS] = ("no staged variant is loaded, and Ultralytics' client calls a staged "
                                            "variant's detector: add one to VARIANTS (e.g. ort)")
    else:
        plan.load.append(spec.NETWORK_ALIAS)
    return plan


def _choose_alias(plan: Plan, repo: Path, loadable: list[spec.Variant]) -> None:
    """`yolov8n` = the first loadable variant of spec.FASTEST_FIRST whose accuracy gate passed
    (repository.gate: only quantised runtimes have one). If none passed, the fastest loadable.
    `yolov8n_network` = the same choice among the staged variants (it calls a staged detector)."""
    ranked = sorted(loadable, key=lambda v: spec.FASTEST_FIRST.index(v.key))
    plan.alias, plan.why = _gated_first(ranked, repo, plan.passed_over)
    staged = [v for v in ranked if not v.fused]
    if staged:
        plan.network, _ = _gated_first(staged, repo, {})


def _gated_first(ranked: list[spec.Variant], repo: Path, passed_over: dict[str, str]) -> tuple[spec.Variant, str]:
    """The first of `ranked` whose gate passed, and why; the ones before it go to `passed_over`."""
    from yolo_triton.repository import gate

    for v in ranked:
        ok, why = gate.verdict(repo, v.runtime)
        if ok:
            return v, f"fastest loadable variant whose accuracy holds ({why})"
        passed_over[v.ensemble] = why
    return ranked[0], "no loaded variant passed its accuracy gate: the fastest loaded one"


def _unservable(repo: Path, v: spec.Variant) -> str | None:
    """Why the variant's detector artefact cannot be loaded here, or None."""
    if v.backend == "tensorrt":  # plans are per GPU model and TensorRT version: a file is not enough
        from yolo_triton.repository import tensorrt as tensorrt_build

        return tensorrt_build.plan_problem(repo / v.detector)
    if not (repo / v.detector / "1" / v.artefact).exists():
        return f"{v.detector}/1/{v.artefact} not built (make build-engines on such a machine)"
    return None
