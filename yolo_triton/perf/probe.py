"""What the server says about one measurement: Triton's statistics and the fused models' stage
metrics, each read before and after it and diffed.

Both are cumulative counters of the whole server, so a measurement only owns the difference;
reading them through one object keeps every tool's window the same: statistics and metrics
around exactly the same requests. A fused model publishes its stage times at most once a second,
on the execute path (yolo_triton.backend.metrics), so what it did in the last second of a run
waits for its next request: when its counters lag Triton's own, the probe waits out that second
and sends one small request. Before a window that request comes before the statistics are read;
after it, the statistics are read first, so the request is one execution among the window's in
the stage times only (the network costs it what any request costs; a small image makes its
letterbox and NMS cheaper than the photos').
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from yolo_triton import spec
from yolo_triton.backend.metrics import FLUSH_S
from yolo_triton.client.detector import DetectorClient
from yolo_triton.perf import metrics, stats

NUDGE = np.full((64, 64, 3), 114, dtype=np.uint8)  # the request that makes a model publish


@dataclass(frozen=True)
class Window:
    """Per-model server time over one measurement."""

    times: dict[str, stats.StageTime] = field(default_factory=dict)  # every model that served requests
    splits: dict[str, metrics.StageSplit] = field(default_factory=dict)  # models that published stage times


class Probe:
    """Snapshots around a measurement: `start()` before it, `stop()` after it gives the Window.

    `ensembles` are the measured ones; the stage metrics of their fused models are read (none
    fused: the metrics page is not read at all)."""

    def __init__(self, client: DetectorClient, metrics_url: str | None, ensembles: Sequence[str] = ()) -> None:
        self.client = client
        self.fused = {v.pipeline: v.ensemble for v in spec.VARIANTS if v.fused and v.ensemble in ensembles}
        self.metrics_url = metrics_url if self.fused else None
        self._stats: dict[str, dict] = {}
        self._metrics: dict[str, metrics.Counters] = {}

    def _published(self) -> dict[str, metrics.Counters]:
        """The stage metrics once every fused model has published what Triton counted."""
        snap = metrics.read(self.metrics_url)
        behind = [ensemble for pipeline, ensemble in self.fused.items() if pipeline in snap and snap[pipeline].behind]
        if not behind:
            return snap
        time.sleep(FLUSH_S)  # its next execute() publishes everything pending
        for ensemble in behind:
            with DetectorClient(self.client.url, model=ensemble, timeout_s=60) as c:
                c.detect(NUDGE)
        return metrics.read(self.metrics_url)

    def start(self) -> None:
        self._metrics = self._published()
        self._stats = stats.snapshot(self.client.model_stats())

    def stop(self) -> Window:
        after = stats.snapshot(self.client.model_stats())
        after_metrics = self._published()
        times = {st.model: st for st in stats.diff(self._stats, after)}
        return Window(times, metrics.diff(self._metrics, after_metrics, list(self.fused)))
