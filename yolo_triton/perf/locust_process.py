"""Locust, headless, as a child process: the load test and the soak start it the same way.

Locust runs in its own process because gevent patches the interpreter it runs in; the tools
around it stay plain threads and gRPC. A watchdog ends a Locust that outlives its run by far
(one stuck on exit after its reports are written is not a failed test; one stuck before is).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from yolo_triton.paths import ROOT

# Locust loads its users from a file (perf/locustfile.py imports them from yolo_triton.perf.users).
LOCUSTFILE = ROOT / "perf" / "locustfile.py"


def command(csv_prefix: Path, url: str, model: str, users: int, spawn_rate: float, duration_s: int,
            stop_timeout_s: float, *options: str) -> list[str]:
    """`python -m locust` on perf/locustfile.py against one ensemble; `options` go to the user
    (--think-time, --triton-rate, ...) or to Locust (--html, --only-summary, ...)."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
            "-r", f"{spawn_rate:g}", "-t", f"{duration_s}s", "--stop-timeout", f"{stop_timeout_s:.0f}",
            "--csv", str(csv_prefix), "--exit-code-on-error", "0", "--triton-url", url, "--triton-model", model,
            *options]


def run(cmd: list[str], log: Path, limit_s: float, tool: str, echo: bool = True,
        started: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run Locust, keeping its output in `log` (and showing it as it comes, with `echo`);
    `started` is handed the process (a caller running this in a thread can end it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with log.open("w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              env=env, cwd=ROOT) as proc:
        if started is not None:
            started(proc)
        watchdog = threading.Timer(limit_s, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                f.write(line)
            rc = proc.wait()
        finally:
            watchdog.cancel()
    if rc < 0 and time.monotonic() - start >= limit_s:
        print(f"{tool}: Locust still running {limit_s:.0f}s after start: stopped it", flush=True)
    print(f"{tool}: Locust finished in {time.monotonic() - start:.0f}s (exit {rc})", flush=True)
    return rc
