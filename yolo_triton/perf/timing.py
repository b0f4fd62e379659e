"""Wall-clock samples of one call, the unit every in-process figure of the benchmarks is made of."""

from __future__ import annotations

import time
from collections.abc import Callable


def samples_ms(fn: Callable[[], object], seconds: float, min_runs: int = 3) -> list[float]:
    """Milliseconds of each call of `fn`, called back to back for `seconds` (at least `min_runs` times)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_runs:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times
