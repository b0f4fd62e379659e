"""The GPU benchmark's summary: per scene its table, per-stage breakdowns, ratios and targets.

The targets are judged on figures measured in the same run only: the served c1 against the
same run's Ultralytics predict, saturated throughput against the same run's raw network.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from yolo_triton.perf import stats

if TYPE_CHECKING:
    from yolo_triton.perf.bench_gpu import PaResult, Scene

TARGET_C1_MS = 1.8  # served c1 median, image in CUDA shared memory
TARGET_SPEEDUP = 5.0  # Ultralytics' predict FP16 / served c1
TARGET_SAT_RATIO = 0.5  # served saturated img/s / raw network's largest-batch img/s
TARGET_IN_PROCESS_MS = 0.8  # the fused pipeline in process, batch 1
TARGET_REMOTE_MS = 2.5  # remote client (encoded JPEG, gRPC, no shared memory), c1 p50
TARGET_REMOTE_OVER_CUDASHM_MS = 1.0
WIDTH = 60


def raw_line(raw: dict) -> str:
    big = int(raw["graph_batch"])
    return (f"{raw['note']}: batch 1 {raw['graph_b1_ms']:.3f} ms, batch {big} {raw[f'graph_b{big}_ms']:.3f} ms = "
            f"{raw[f'graph_b{big}_img_s']:.0f} img/s; uncompiled graph: batch 1 {raw['exported_graph_b1_ms']:.3f} "
            f"ms, batch {big} {raw[f'exported_graph_b{big}_img_s']:.0f} img/s; eager batch 1 "
            f"{raw['eager_b1_ms']:.3f} ms")


def best_c1(levels: list[PaResult]) -> PaResult | None:
    """The fastest c1 with the image in CUDA shared memory over gRPC (else the fastest c1)."""
    c1 = [r for r in levels if r.ok and r.concurrency == 1]
    shm = [r for r in c1 if r.shm == "cuda" and r.protocol == "grpc"]
    return min(shm or c1, key=lambda r: r.p50_ms) if c1 else None


def best_saturated(levels: list[PaResult]) -> PaResult | None:
    sat = [r for r in levels if r.ok and r.concurrency > 1]
    return max(sat, key=lambda r: r.img_s) if sat else None


def scene_lines(scene: Scene) -> list[str]:
    """The scene's table, its per-stage breakdowns, its ratios and its targets."""
    ul, raw, fused, levels = scene.ultralytics, scene.raw, scene.fused, scene.levels
    big = int(raw["graph_batch"])
    found = ", ".join(f"{c['detections']} ({m})" for m, c in scene.check.items())
    lines = ["", f"== scene {scene.name}: weights {scene.facts.source}, imgsz {scene.facts.imgsz}; boxes on the "
             f"image at confidence 0.25: Ultralytics {ul['boxes']}, served {found}"]
    if scene.facts.source.endswith((".yaml", ".yml")):
        lines.append("  (seeded weights: the network costs what the trained one does, but NMS gets no boxes)")
    lines += [f"{'':<{WIDTH}}{'p50 ms':>9}{'p99 ms':>9}{'img/s':>9}",
              f"{'(1) Ultralytics predict FP16, 1 image':<{WIDTH}}{ul['median_ms']:>9.3f}{'':>9}"
              f"{1e3 / ul['median_ms']:>9.0f}",
              f"{'(2) raw FP16 CUDA graph, batch 1':<{WIDTH}}{raw['graph_b1_ms']:>9.3f}{'':>9}"
              f"{1e3 / raw['graph_b1_ms']:>9.0f}",
              f"{f'(2) raw FP16 CUDA graph, batch {big}':<{WIDTH}}{raw[f'graph_b{big}_ms']:>9.3f}{'':>9}"
              f"{raw[f'graph_b{big}_img_s']:>9.0f}",
              f"{'(2) fused pipeline in process, batch 1':<{WIDTH}}{fused['total_ms']:>9.3f}",
              "    stages, synchronised: " + ", ".join(f"{k[:-3]} {fused[k]:.3f} ms" for k in fused if k != "total_ms")]
    for r in levels:
        label = f"(3) {r.label} (c{r.concurrency} x b{r.batch})"
        if r.ok:
            lines.append(f"{label:<{WIDTH}}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.img_s:>9.0f}  {r.note}")
        else:
            lines.append(f"{label:<{WIDTH}}  FAILED: {r.note}")
    lines.append("")
    for r in levels:
        if r.ok:
            lines.append(f"per stage, {r.label} (Triton statistics, mean ms per request over the run; "
                         "model:stage rows: stage metrics, ms per execution):")
            lines.append(textwrap.indent(stats.table(r.stages), "  "))
            lines.append("  perf_analyzer (us->ms): " + ", ".join(f"{k} {v:.3f}" for k, v in r.server_ms.items()))
    lines.append("")
    c1, sat = best_c1(levels), best_saturated(levels)
    if c1:
        lines.append(f"ratio served c1 ({c1.label}) / raw batch 1 = {c1.p50_ms / raw['graph_b1_ms']:.2f}")
        lines.append(f"ratio Ultralytics / served c1 ({c1.label}) = {ul['median_ms'] / c1.p50_ms:.2f}x faster")
    if sat:
        lines.append(f"ratio served saturated ({sat.label}) / raw batch {big} = "
                     f"{sat.img_s / raw[f'graph_b{big}_img_s']:.2f}")
    for name, ok, value in checks(scene):
        lines.append(f"target [{scene.name}] {name}: {'MET' if ok else 'MISSED'} ({value})")
    return lines


def checks(scene: Scene) -> list[tuple[str, bool, str]]:
    """(target, met, the figure) for every target the scene's measurements can judge."""
    ul, raw, levels = scene.ultralytics, scene.raw, scene.levels
    big = int(raw["graph_batch"])
    out = [(f"fused pipeline in process, batch 1 <= {TARGET_IN_PROCESS_MS:.1f} ms",
            scene.fused["total_ms"] <= TARGET_IN_PROCESS_MS, f"{scene.fused['total_ms']:.3f} ms")]
    c1, sat = best_c1(levels), best_saturated(levels)
    if c1:
        out.append((f"c1 median latency <= {TARGET_C1_MS:.1f} ms", c1.p50_ms <= TARGET_C1_MS,
                    f"{c1.p50_ms:.3f} ms, {c1.label}"))
        speedup = ul["median_ms"] / c1.p50_ms
        out.append((f"c1 >= {TARGET_SPEEDUP:.1f}x faster than Ultralytics predict", speedup >= TARGET_SPEEDUP,
                    f"{speedup:.2f}x, {c1.label}"))
    if sat:
        ratio = sat.img_s / raw[f"graph_b{big}_img_s"]
        out.append((f"saturated >= {TARGET_SAT_RATIO:.1f}x the raw network's batch-{big} throughput",
                    ratio >= TARGET_SAT_RATIO, f"{ratio:.2f}x: {sat.img_s:.0f} img/s, {sat.label}"))
    return out + remote_checks(levels)


def remote_checks(levels: list[PaResult]) -> list[tuple[str, bool, str]]:
    """The remote-client targets, per model: encoded c1 against the bound and its CUDA-shm c1."""
    out = []
    for r in levels:
        if not (r.ok and r.shm == "encoded" and r.concurrency == 1):
            continue
        out.append((f"{r.label} <= {TARGET_REMOTE_MS:.1f} ms", r.p50_ms <= TARGET_REMOTE_MS, f"{r.p50_ms:.3f} ms"))
        shm = [s for s in levels if s.ok and s.model == r.model and s.shm == "cuda" and s.concurrency == 1
               and s.protocol == "grpc"]
        if shm:
            extra = r.p50_ms - shm[0].p50_ms
            out.append((f"{r.label} <= {shm[0].label} + {TARGET_REMOTE_OVER_CUDASHM_MS:.1f} ms",
                        extra <= TARGET_REMOTE_OVER_CUDASHM_MS, f"+{extra:.3f} ms"))
    return out
