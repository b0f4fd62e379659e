"""What this machine has to build and serve plans with: its GPUs, its TensorRT, and which builder.

A plan only runs on the GPU model and TensorRT version that built it, so both are asked of the
machine here: GPUs from nvidia-smi (mapped through CUDA_VISIBLE_DEVICES) or torch, TensorRT from
the Python package, trtexec's banner or the system libnvinfer. The parsers are plain functions of
the tools' text, tested without the tools.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BUILDERS = ("auto", "python", "trtexec")
# Where NVIDIA's containers keep trtexec when it is not on PATH (Triton/TensorRT images).
TRTEXEC_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"]


@dataclass(frozen=True)
class Gpu:
    """A CUDA device as nvidia-smi names it."""

    index: str
    name: str
    cc: str  # compute capability, "9.0": the key of Triton's cc_model_filenames
    uuid: str = ""

    @property
    def sm(self) -> str:
        return "sm" + self.cc.replace(".", "")

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


def short_version(version: str) -> str:
    """'10.5.0.18' -> '10.5.0': plans are compatible within one major.minor.patch."""
    parts = re.findall(r"\d+", version)
    if len(parts) < 2:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return ".".join((parts + ["0"])[:3])


# --- GPUs ---------------------------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> list[Gpu]:
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and re.fullmatch(r"\d+\.\d+", parts[3]):
            gpus.append(Gpu(index=parts[0], uuid=parts[1], name=parts[2], cc=parts[3]))
    return gpus


def select_visible(gpus: list[Gpu], cuda_visible_devices: str | None) -> list[Gpu] | None:
    """The devices a CUDA process sees, in its order; None when the variable can't be mapped (MIG)."""
    if cuda_visible_devices is None:
        return gpus
    out: list[Gpu] = []
    for token in (t.strip() for t in cuda_visible_devices.split(",")):
        if not token:
            continue
        if token.lstrip("-").isdigit():
            if int(token) < 0:
                break  # CUDA stops at the first invalid index
            match = [g for g in gpus if g.index == token]
        elif token.startswith("GPU-"):
            match = [g for g in gpus if g.uuid.startswith(token)]
        else:
            return None
        if not match:
            break
        out.append(match[0])
    return out


def visible_gpus() -> list[Gpu] | None:
    """The GPUs a CUDA process started now would use; None when this can't be told (no nvidia-smi)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, *NVIDIA_SMI_QUERY[1:]], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = parse_nvidia_smi(out.stdout)
    return select_visible(gpus, os.environ.get("CUDA_VISIBLE_DEVICES")) if gpus else None


def build_device() -> list[Gpu]:
    """The GPU a builder here uses: CUDA's device 0 (torch knows CUDA's order; nvidia-smi otherwise)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            name = torch.cuda.get_device_name(0)
            smi = visible_gpus() or []
            index = next((g.index for g in smi if g.name == name and g.cc == f"{major}.{minor}"), "0")
            return [Gpu(index=index, name=name, cc=f"{major}.{minor}")]
    except Exception:  # noqa: BLE001 - no usable torch: fall back to nvidia-smi
        pass
    return visible_gpus() or []


# --- TensorRT: the server's library, the Python package, trtexec ---------------------------------


def trt_version_from_library(name: str) -> str | None:
    """'libnvinfer.so.10.5.0' -> '10.5.0' (None for the bare `.so.10` link name)."""
    m = re.fullmatch(r"libnvinfer\.so\.(\d+\.\d+\.\d+)(?:\.\d+)*", name)
    return m.group(1) if m else None


def installed_trt_version() -> str | None:
    """The TensorRT that Triton's tensorrt backend loads here (the system libnvinfer), if found."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    versions = []
    for m in re.finditer(r"libnvinfer\.so\.\d+ .*=> (\S+)", out):
        v = trt_version_from_library(Path(os.path.realpath(m.group(1))).name)
        if v:
            versions.append(v)
    return max(versions, key=lambda v: tuple(int(p) for p in v.split("."))) if versions else None


def python_trt_version() -> tuple[str | None, str]:
    """(version, '') if the tensorrt Python package imports, else (None, why not)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None, "the tensorrt Python package is not installed"
    except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer) raises OSError and others
        return None, f"the tensorrt Python package does not import ({type(e).__name__}: {e})"
    return short_version(trt.__version__), ""


def find_trtexec() -> str | None:
    """$TRTEXEC, else trtexec on PATH, else where NVIDIA's containers keep it."""
    env = os.environ.get("TRTEXEC")
    if env and Path(env).is_file() and os.access(env, os.X_OK):
        return env
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_LOCATIONS if Path(p).is_file() and os.access(p, os.X_OK)), None)


def parse_trtexec_version(text: str) -> str | None:
    """Version from trtexec's banner: `[TensorRT v100500]` (10.5.0) or `[TensorRT v8601]` (8.6.1)."""
    m = re.search(r"\[TensorRT v(\d+(?:\.\d+)*)\]", text)
    if not m:
        m = re.search(r"TensorRT version:\s*(\d+\.\d+(?:\.\d+)*)", text)
        return short_version(m.group(1)) if m else None
    raw = m.group(1)
    if "." in raw:
        return short_version(raw)
    n = int(raw)
    if n >= 100000:  # TensorRT 10+: major*10000 + minor*100 + patch
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"  # TensorRT 8: major*1000 + minor*100 + patch


def trtexec_version(trtexec: str | None) -> str | None:
    """The TensorRT a trtexec builds with, from the banner of its --help; None if it can't be told."""
    if trtexec is None:
        return None
    try:
        out = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_trtexec_version(out.stdout + out.stderr)


def parse_trtexec_device(text: str) -> tuple[str, str] | None:
    """(GPU name, compute capability) trtexec reports having built on."""
    name = re.search(r"Selected Device:\s*(.+?)\s*$", text, re.MULTILINE)
    cc = re.search(r"Compute Capability:\s*(\d+\.\d+)", text)
    return (name.group(1), cc.group(1)) if name and cc else None


def choose_builder(requested: str, python_version: str | None, python_why: str, trtexec: str | None,
                   precision: str, calib_cache_exists: bool) -> tuple[str | None, str]:
    """('python' | 'trtexec', '') or (None, the reason plans cannot be built here)."""
    if requested not in BUILDERS:
        raise ValueError(f"builder must be one of {', '.join(BUILDERS)}, got {requested!r}")
    no_trtexec = "trtexec is not on PATH"
    if requested == "python" and python_version is None:
        return None, f"--trt-builder python, but {python_why}"
    if requested == "trtexec" and trtexec is None:
        return None, f"--trt-builder trtexec, but {no_trtexec}"
    if requested == "auto":
        if python_version is not None:
            requested = "python"
        elif trtexec is not None:
            requested = "trtexec"
        else:
            return None, f"{python_why} and {no_trtexec}"
    if requested == "trtexec" and precision == "int8" and not calib_cache_exists:
        return None, ("INT8 through trtexec needs a calibration cache, and trtexec cannot calibrate from images: "
                      "install the tensorrt Python package matching this TensorRT to calibrate with --calib-images")
    return requested, ""
