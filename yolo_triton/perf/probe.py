"""What the server says about one measurement: Triton's statistics and the fused models' stage
metrics, each read before and after it and diffed.

Both are cumulative counters of the whole server, so a measurement only owns the difference;
reading them through one object keeps every tool's window the same: statistics and metrics
around exactly the same requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.perf import metrics, stats


@dataclass(frozen=True)
class Window:
    """Per-model server time over one measurement."""

    times: dict[str, stats.StageTime] = field(default_factory=dict)  # every model that served requests
    splits: dict[str, metrics.StageSplit] = field(default_factory=dict)  # models that published stage times


class Probe:
    """Snapshots around a measurement: `start()` before it, `stop()` after it gives the Window.

    `pipelines` are the models whose stage metrics to read (the fused ones measured); none: the
    metrics page is not read at all."""

    def __init__(self, client: DetectorClient, metrics_url: str | None, pipelines: Sequence[str] = ()) -> None:
        self.client, self.pipelines = client, list(pipelines)
        self.metrics_url = metrics_url if self.pipelines else None
        self._stats: dict[str, dict] = {}
        self._metrics: dict[str, metrics.Counters] = {}

    def start(self) -> None:
        self._stats = stats.snapshot(self.client.model_stats())
        self._metrics = metrics.read(self.metrics_url)

    def stop(self) -> Window:
        after_metrics = metrics.read(self.metrics_url)
        after = stats.snapshot(self.client.model_stats())
        times = {st.model: st for st in stats.diff(self._stats, after)}
        return Window(times, metrics.diff(self._metrics, after_metrics, self.pipelines))


def pipelines(models: Sequence[str]) -> list[str]:
    """The fused python models behind these ensembles (the ones that may publish stage metrics)."""
    return [v.pipeline for v in spec.VARIANTS if v.fused and (v.ensemble in models or v.pipeline in models)]
