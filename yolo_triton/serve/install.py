"""Find a tritonserver to run: NVIDIA's container's, or the one bundled in the nvidia-pytriton wheel.

A `tritonserver` on PATH (NVIDIA's container) is used first; otherwise the wheel's, whose python
backend is assembled under the venv with the stub that matches this interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen(preexec_fn=...): the child gets SIGTERM when the thread that started it ends.

    tritonserver and nginx run in sessions of their own (a Ctrl-C must reach the launcher alone),
    out of reach of the launcher's process group, so a killed launcher would leave them running.
    Linux ties this signal to the starting *thread*: only the launcher's main thread may use it
    (`Server(die_with_parent=True)`), never a library caller that may start from a short-lived one."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_group(proc: subprocess.Popen | None, sig: int, timeout: float) -> None:
    """Stop a child started in a session of its own: `sig` (its graceful stop), then after `timeout`
    SIGKILL to its whole process group (its workers or stubs, all started by it)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet: its group id is still ours
        proc.wait()


class LaunchError(RuntimeError):
    """The server cannot be started as asked; the message says what to do."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path
    lib_dirs: tuple[Path, ...] = ()
    bundled: bool = False

    @property
    def backends(self) -> set[str]:
        return {p.name for p in self.backend_dir.iterdir() if p.is_dir()} if self.backend_dir.is_dir() else set()


def _pytriton_dir() -> Path | None:
    found = importlib.util.find_spec("pytriton")  # locate without importing: its deps are not installed
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def bundled_libs() -> Path | None:
    """The shared libraries nvidia-pytriton ships (libcudart.so.12, libb64 among them)."""
    pt = _pytriton_dir()
    return pt.parent / "nvidia_pytriton.libs" if pt else None


def _assemble_python_backend(pt: Path) -> Path:
    """A backend directory whose python backend carries the stub for this interpreter.

    The stub must match the Python the models run under (the first python3 on PATH, which the
    launcher makes this venv's), and the wheel keeps one stub per Python version aside.
    """
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = pt / "tritonserver"
    stub = src / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise LaunchError(f"the bundled tritonserver has no python backend stub for Python {ver} (3.10-3.12 do)")
    dest = Path(sys.prefix) / "triton-backends" / "python"
    dest.mkdir(parents=True, exist_ok=True)
    for f in (src / "backends" / "python").iterdir():
        link = dest / f.name
        if not link.exists():
            link.symlink_to(f)
    target = dest / "triton_python_backend_stub"
    if not target.exists():
        shutil.copy2(stub, target)
    return dest.parent


@functools.cache  # one interpreter per process: every server started from it asks once
def stub_numpy_version() -> str:
    """The NumPy version the python backend stub will import ("" if none).

    The stub runs this interpreter (environment() puts it first on PATH) but ignores PYTHONPATH:
    its sys.path holds the interpreter's own folders, site-packages and the working directory,
    and nothing from PYTHONPATH (seen by printing it from a model). `python -E` reads the same
    path, so a NumPy that PYTHONPATH puts in front for this process is not taken for the stub's.
    """
    try:
        out = subprocess.run([sys.executable, "-E", "-c", "import numpy; print(numpy.__version__)"],
                             capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def stub_numpy_problem(install: TritonInstall, numpy_version: Callable[[], str] = stub_numpy_version) -> str | None:
    """Why the models' Python cannot serve under this server's python backend stub, or None.

    The stub of tritonserver 2.51 (the nvidia-pytriton 0.7.0 wheel, also where a tritonserver
    unpacked from it is on PATH) is compiled against NumPy 1. Under NumPy 2 it builds a BYTES
    input's array with the wrong strides, so its first byte repeats, deserialising the input
    throws inside the stub, and the stub dies with the model: any IMAGE_BYTES request would take
    the model down (seen with NumPy 2.5 and 2.2, for a 10-byte and a 137 kB input alike, in CPU
    and GPU instances; with NumPy 1.26 the same requests are served). NVIDIA's
    container builds its stub for the NumPy it ships, so only this one is checked.
    """
    if not (install.bundled or "pytriton" in install.binary.parts):
        return None
    version = numpy_version()
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < 2:
        return None
    return (f"NumPy {version} is installed for the models, but the python backend stub of the bundled "
            f"tritonserver 2.51 is built against NumPy 1 and dies at the first BYTES input (IMAGE_BYTES): "
            f"install NumPy 1 (`python -m pip install 'numpy<2'`, as requirements.txt pins it)")


def find_triton() -> TritonInstall:
    system = shutil.which("tritonserver")
    if system:
        binary = Path(system).resolve()
        backend_dir = Path(os.environ.get("TRITON_BACKENDS", binary.parents[1] / "backends"))
        return TritonInstall(binary, backend_dir)
    pt = _pytriton_dir()
    if pt is None or not (pt / "tritonserver" / "bin" / "tritonserver").exists():
        raise LaunchError("no tritonserver found: run `make setup` (bundled server) or use NVIDIA's Triton container")
    libs = bundled_libs()
    return TritonInstall(
        pt / "tritonserver" / "bin" / "tritonserver",
        _assemble_python_backend(pt),
        (libs,) if libs else (),
        bundled=True,
    )


def gpu_available() -> bool:
    if os.environ.get("YOLO_TRITON_NO_GPU"):
        return False
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi") is not None


def environment(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    # The python-backend stub runs the first python3 on PATH: make it this venv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if install.lib_dirs:
        extra = os.pathsep.join(str(p) for p in install.lib_dirs)
        env["LD_LIBRARY_PATH"] = f"{extra}{os.pathsep}{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else extra
    env.setdefault("OMP_NUM_THREADS", "1")  # numpy/cv2 in pre/post must not fight ONNX Runtime for cores
    env.pop("TRITON_API_KEY", None)  # the server is given its key by file (yolo_triton.keys), not by environment
    return env
