"""cProfile of a python model's execute() calls: which lines of the glue a served request pays for.

Triton's statistics time a model as a whole, and `StageMetrics` times its stages. Neither says
which Python call inside execute() costs what, and on the GPU that Python is most of a request
(docs/benchmarks.md). With `PROFILE_ENV` naming a folder in the server's environment (the stub
inherits it), each model process profiles its execute() calls and writes
`<folder>/<model>-<pid>.pstats` every `DUMP_S` seconds and at finalize; `python -m pstats` reads
it. Off by default: the profiler itself adds to every Python call it sees.
"""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path
from types import TracebackType

PROFILE_ENV = "YOLO_TRITON_PROFILE_DIR"
DUMP_S = 5.0


class ExecuteProfile:
    """`with profile:` around an execute(); does nothing unless `PROFILE_ENV` was set at start."""

    def __init__(self, model: str, folder: str | None = None) -> None:
        folder = os.environ.get(PROFILE_ENV) if folder is None else folder
        self.path = Path(folder) / f"{model}-{os.getpid()}.pstats" if folder else None
        self.profiler = cProfile.Profile() if self.path else None
        self._last_dump = time.monotonic()

    def __enter__(self) -> ExecuteProfile:
        if self.profiler is not None:
            self.profiler.enable()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.profiler is None:
            return
        self.profiler.disable()
        if time.monotonic() - self._last_dump >= DUMP_S:
            self.dump()

    def dump(self) -> None:
        """Write what has been profiled so far (the whole run: cProfile keeps adding up)."""
        if self.profiler is None or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.profiler.dump_stats(str(self.path))
        self._last_dump = time.monotonic()
