"""Run folders and what a run records about itself.

Every tool writes into runs/<tool>/<timestamp>/ and finishes with meta.json (command line,
machine, versions), so the report can find the latest finished run of each kind and say under
what conditions it was measured.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from yolo_triton.paths import ROOT, RUNS
from yolo_triton.perf.errors import PerfToolError

META_FILE = "meta.json"  # written last: a run folder without it did not finish
VERSIONED_PACKAGES = ("tritonclient", "nvidia-pytriton", "ultralytics", "onnxruntime", "torch", "locust", "numpy")


def run_dir(kind: str, runs: Path = RUNS) -> Path:
    """runs/<kind>/<YYYYmmdd-HHMMSS>/, new each time (a suffix when two start in one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs / kind
    for i in range(1000):
        d = base / (stamp if i == 0 else f"{stamp}-{i + 1}")
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise PerfToolError(f"cannot create a run folder under {base}")


def latest_run(kind: str, runs: Path = RUNS) -> Path | None:
    """The newest finished run of a kind (one whose meta.json was written)."""
    base = runs / kind
    if not base.is_dir():
        return None
    done = [d for d in base.iterdir() if (d / META_FILE).is_file()]
    return max(done, key=lambda d: ((d / META_FILE).stat().st_mtime, d.name), default=None)


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    with contextlib.suppress(OSError):
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]  # the box is shared: say how busy it was
    gpus = _gpus()
    if gpus:
        info["gpus"] = gpus
    return info


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_meta(folder: Path, tool: str, extra: dict[str, object]) -> Path:
    """The run's record (command line, machine, versions); written last, it marks the run finished.

    Paths inside the project are written relative to its root, so the recorded command lines can
    be pasted into another checkout."""
    meta = {
        "tool": tool,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine_info(),
        "versions": package_versions(),
        **extra,
    }
    path = folder / META_FILE
    path.write_text(json.dumps(meta, indent=1, default=str).replace(f"{ROOT}{os.sep}", ""))
    return path


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META_FILE).read_text())


def shown(path: Path) -> str:
    """A path as the tools print it: relative to the project when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
