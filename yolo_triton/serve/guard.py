"""Build (once) the library the launcher preloads into tritonserver and perf_analyzer.

What it does and why is in guard.c: it refuses request shapes that would kill a python stub
before Triton stores them, and it keeps secrets out of process arguments. It is compiled from
source on first use with the system C compiler, into the per-user state folder, named by the
source's hash so an edited guard.c is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from yolo_triton.serve import keys

SOURCE = Path(__file__).with_name("guard.c")


class GuardUnavailable(RuntimeError):
    """The guard cannot be built here; the message names the fix."""


def library() -> Path:
    """The compiled guard, built now if this version of guard.c has not been built yet."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = keys.state_dir() / "lib" / f"yolo-triton-guard-{digest}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise GuardUnavailable(
            "no C compiler to build the request guard (yolo_triton/guard.c): install one "
            "(apt-get install gcc) and start again"
        )
    keys.private_dir(out.parent)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise GuardUnavailable(f"building the request guard failed ({' '.join(cmd)}): {done.stderr.strip()}")
    tmp.replace(out)  # atomic: two launches building at once both end with a whole file
    return out


def preload_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the guard first in LD_PRELOAD (it removes itself again inside the process)."""
    lib = str(library())
    old = env.get("LD_PRELOAD")
    return {**env, "LD_PRELOAD": f"{lib}:{old}" if old else lib}
