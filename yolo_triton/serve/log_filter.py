"""tritonserver's log without the start-up lines that only say this machine has no GPU.

The bundled tritonserver 2.51 is built with GPU support. Started where no GPU is visible it logs
errors that are not errors: "CudaDriverHelper has not been initialized", one "unable to create
stream for <ensemble>: CUDA driver version is insufficient" per ensemble (the ensemble scheduler
creates a CUDA stream unconditionally), NVML and DCGM failures, and pinned-memory warnings.
No flag of 2.51 turns these off (`--pinned-memory-pool-byte-size=0` trades the start-up warning
for one "failed to allocate pinned system memory" warning per request), so they are dropped here,
and the log says so in its first line. Every other line, every real error included, goes through.
"""

from __future__ import annotations

import re
import threading
from typing import IO

# Each is matched against one log line; they name the messages exactly, so nothing else is dropped.
CPU_ONLY_NOISE = (
    re.compile(rb'"CudaDriverHelper has not been initialized\."'),
    re.compile(rb'"unable to create stream for [^:"]+: (CUDA driver version is insufficient|no CUDA-capable device)'),
    re.compile(rb'"Unable to allocate pinned system memory'),  # at start, and once at the first request:
    re.compile(rb'"failed to allocate pinned system memory: no pinned memory pool, falling back'),
    re.compile(rb'"CUDA memory pool disabled"'),
    re.compile(rb"^Error: Failed to initialize NVML"),
    re.compile(rb'"DCGM unable to start: DCGM initialization error"'),
)
NOTE = (b"yolo-triton: no GPU visible: tritonserver's start-up lines that only say so (CUDA, NVML, DCGM) "
        b"are left out of this log\n")


def is_cpu_only_noise(line: bytes) -> bool:
    return any(p.search(line) for p in CPU_ONLY_NOISE)


class LogFilter(threading.Thread):
    """Copies tritonserver's output to `sink` line by line, without CPU_ONLY_NOISE."""

    def __init__(self, source: IO[bytes], sink: IO[bytes]) -> None:
        super().__init__(name="tritonserver-log", daemon=True)
        self.source, self.sink = source, sink

    def run(self) -> None:
        self.sink.write(NOTE)
        self.sink.flush()
        for line in iter(self.source.readline, b""):
            if not is_cpu_only_noise(line):
                self.sink.write(line)
                self.sink.flush()
        self.source.close()
