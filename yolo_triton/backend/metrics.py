"""Per-stage time of every python model, as Triton custom metrics on the metrics port.

Triton's own statistics time a model as a whole; a fused pipeline is one model with three stages
inside, so each python model reports its stages itself (`pb_utils.MetricFamily`, python backend
2.51): `spec.STAGE_DURATION_METRIC{model, stage}` in microseconds, and the executions and images
they served. Every metric update is a message from the stub to the server, measured here at
40-70 us each, which is a fair share of a 2 ms request on the GPU. So the times are summed per
execute() in the stub and sent at most once a second (`FLUSH_S`), on the execute path: one flush
(five updates) a second costs well under 0.1% of a core, and what the flushes cost is itself
reported, as the stage "report". `Stopwatch` is what a stage loop uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

from yolo_triton import spec

FLUSH_S = 1.0
REPORT = "report"  # the stage label under which flushing reports its own cost


class StageMetrics:
    """Counters of one model's stages, summed in the stub and flushed at most every FLUSH_S."""

    def __init__(self, pb_utils: ModuleType, model: str, stages: Sequence[str], flush_s: float = FLUSH_S) -> None:
        counter = pb_utils.MetricFamily.COUNTER
        duration = pb_utils.MetricFamily(name=spec.STAGE_DURATION_METRIC, kind=counter,
                                         description="time spent in each pipeline stage, microseconds")
        executions = pb_utils.MetricFamily(name=spec.STAGE_EXECUTIONS_METRIC, kind=counter,
                                           description="execute() calls of a python model")
        images = pb_utils.MetricFamily(name=spec.STAGE_IMAGES_METRIC, kind=counter,
                                       description="images served by a python model's execute() calls")
        self._stage = {s: duration.Metric(labels={"model": model, "stage": s}) for s in (*stages, REPORT)}
        self._executions = executions.Metric(labels={"model": model})
        self._images = images.Metric(labels={"model": model})
        self._families = (duration, executions, images)  # the families must outlive their metrics
        self.flush_s = flush_s
        self._pending_us = dict.fromkeys((*stages, REPORT), 0.0)
        self._pending_calls = self._pending_images = 0
        self._last_flush = -float("inf")  # the first execute() flushes: metrics appear at once
        self.flush_cost_s = 0.0  # what reporting has cost in all (bench and tests read it)
        self.flushes = 0

    def add(self, seconds: dict[str, float], images: int) -> None:
        """One execute()'s stage times; sent on when FLUSH_S has passed since the last flush."""
        for stage, s in seconds.items():
            self._pending_us[stage] += s * 1e6
        self._pending_calls += 1
        self._pending_images += images
        now = time.monotonic()
        if now - self._last_flush >= self.flush_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        t0 = time.perf_counter()
        for stage, us in self._pending_us.items():
            if us:
                self._stage[stage].increment(us)
                self._pending_us[stage] = 0.0
        if self._pending_calls:
            self._executions.increment(self._pending_calls)
            self._images.increment(self._pending_images)
            self._pending_calls = self._pending_images = 0
        self._last_flush = time.monotonic() if now is None else now
        cost = time.perf_counter() - t0
        self._pending_us[REPORT] += cost * 1e6  # sent with the next flush
        self.flush_cost_s += cost
        self.flushes += 1


class Stopwatch:
    """Stage times of one execute(): `with watch("network"): ...` adds to that stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
