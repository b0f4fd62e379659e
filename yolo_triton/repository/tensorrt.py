"""TensorRT plans for the native `tensorrt_plan` detector, and whether this machine can serve them.

A serialized plan only runs on the GPU model and the TensorRT version that built it. So every
plan is named after both (`model.sm90.nvidia-h200.trt10.5.0.plan`) and has a JSON sidecar that
records what it was built from; `apply_plans` maps each compute capability to its plan in the
detector's `cc_model_filenames`, and `default_model_filename` names a file that never exists,
so a Triton on an unmapped GPU refuses to load rather than running another GPU's plan. The
launcher asks `plan_problem` before it loads the variant, and names the reason when it can't.

Builders: the TensorRT Python API when `tensorrt` imports, else `trtexec` (PATH, $TRTEXEC, or
where NVIDIA's containers keep it). Only `_build_python` and `_run_trtexec` touch TensorRT; the
decisions (profile shapes, flags, names, trtexec's command line, freshness) are plain functions
of plain values, tested on machines without TensorRT.

Written against the TensorRT 10 Python API and trtexec documentation, and not yet run where this
project is developed (no TensorRT there): tests/test_tensorrt.py builds a real plan only where
TensorRT imports. See docs/ngc.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.repository import configs as repository
from yolo_triton.repository.configs import ModelFacts

PRECISIONS = ("fp16", "fp32", "int8")
BUILDERS = ("auto", "python", "trtexec")
DEFAULT_WORKSPACE_MIB = 4096
MAX_CALIB_IMAGES = 512  # TensorRT's guidance: ~500 representative images are enough for calibration
# Where NVIDIA's containers keep trtexec when it is not on PATH (Triton/TensorRT images).
TRTEXEC_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")
TRT_VARIANT = spec.variant("trt")
SKIPPED = "TensorRT plans skipped"


class BuildError(RuntimeError):
    """A plan could not be built; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Plain values: GPUs, names, shapes, flags, command lines
# ---------------------------------------------------------------------------------------------


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


def plan_stem(gpu: Gpu, trt_version: str) -> str:
    """`model.sm90.nvidia-h200.trt10.5.0`: compute capability, GPU model and TensorRT version."""
    return f"model.{gpu.sm}.{gpu.slug}.trt{trt_version}"


def short_version(version: str) -> str:
    """'10.5.0.18' -> '10.5.0': plans are compatible within one major.minor.patch."""
    parts = re.findall(r"\d+", version)
    if len(parts) < 2:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return ".".join((parts + ["0"])[:3])


def builder_flags(precision: str) -> tuple[str, ...]:
    """Names of the trt.BuilderFlag members to set.

    INT8 also allows FP16: layers TensorRT cannot quantize then run in FP16 instead of FP32.
    FP32 sets nothing (TensorRT 10 allows TF32 by default on Ampere and later).
    """
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}
    if precision not in flags:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return flags[precision]


def profile_shapes(imgsz: int, opt_batch: int, max_batch: int = spec.MAX_BATCH,
                   min_batch: int = 1) -> dict[str, tuple[int, ...]]:
    """The optimisation profile: batch min..max (max = the config's max_batch_size), fixed size.

    The ONNX export leaves height and width dynamic too; the profile pins them to imgsz, which is
    what the config declares and what preprocess produces.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"TensorRT batch range must satisfy 1 <= min <= opt <= max, got "
                         f"{min_batch}/{opt_batch}/{max_batch}")
    if imgsz <= 0 or imgsz % 32:
        raise ValueError(f"imgsz must be a positive multiple of 32, got {imgsz}")
    channels = spec.PIXELS.dims[0]
    return {k: (b, channels, imgsz, imgsz) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}


def shape_arg(name: str, shape: Sequence[int]) -> str:
    """trtexec's (and ONNX Runtime's TensorRT EP's) shape syntax: `images:1x3x640x640`."""
    return f"{name}:" + "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class BuildSettings:
    """Everything a plan build depends on, in plain values."""

    onnx: Path
    plan: Path
    imgsz: int
    precision: str = "fp16"
    opt_batch: int = repository.TRT_OPT_BATCH
    max_batch: int = spec.MAX_BATCH
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Path | None = None
    calib_cache: Path | None = None
    input_name: str = spec.PIXELS.name

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return profile_shapes(self.imgsz, self.opt_batch, self.max_batch)

    @property
    def flags(self) -> tuple[str, ...]:
        return builder_flags(self.precision)


def trtexec_argv(trtexec: str, s: BuildSettings) -> list[str]:
    """trtexec's command line for `s` (TensorRT 10 flags: --memPoolSize replaced --workspace)."""
    shapes = s.shapes
    argv = [
        trtexec,
        f"--onnx={s.onnx}",
        f"--saveEngine={s.plan}",
        f"--minShapes={shape_arg(s.input_name, shapes['min'])}",
        f"--optShapes={shape_arg(s.input_name, shapes['opt'])}",
        f"--maxShapes={shape_arg(s.input_name, shapes['max'])}",
        f"--memPoolSize=workspace:{s.workspace_mib}M",
        "--skipInference",
    ]
    if s.timing_cache is not None:
        argv.append(f"--timingCacheFile={s.timing_cache}")
    argv += [f"--{f.lower()}" for f in s.flags]
    if s.precision == "int8":
        if s.calib_cache is None:
            raise ValueError("trtexec builds INT8 only from an existing calibration cache")
        argv.append(f"--calib={s.calib_cache}")
    return argv


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


def parse_trtexec_device(text: str) -> tuple[str, str] | None:
    """(GPU name, compute capability) trtexec reports having built on."""
    name = re.search(r"Selected Device:\s*(.+?)\s*$", text, re.MULTILINE)
    cc = re.search(r"Compute Capability:\s*(\d+\.\d+)", text)
    return (name.group(1), cc.group(1)) if name and cc else None


NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,compute_cap", "--format=csv,noheader"]


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


def find_trtexec() -> str | None:
    """$TRTEXEC, else trtexec on PATH, else where NVIDIA's containers keep it."""
    env = os.environ.get("TRTEXEC")
    if env and Path(env).is_file() and os.access(env, os.X_OK):
        return env
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_LOCATIONS if Path(p).is_file() and os.access(p, os.X_OK)), None)


def python_trt_version() -> tuple[str | None, str]:
    """(version, '') if the tensorrt Python package imports, else (None, why not)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None, "the tensorrt Python package is not installed"
    except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer) raises OSError and others
        return None, f"the tensorrt Python package does not import ({type(e).__name__}: {e})"
    return short_version(trt.__version__), ""


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def calibration_images(folder: Path, limit: int = MAX_CALIB_IMAGES) -> list[Path]:
    """The image files under `folder` (sorted, at most `limit`, evenly spread over the list)."""
    from yolo_triton.client.images import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise BuildError(f"--calib-images {folder}: not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def calibration_digest(onnx_sha: str, files: Sequence[Path], imgsz: int, batch: int, trt_version: str) -> str:
    """Identity of a calibration: the cache is reused only for the same network, data and shapes."""
    h = hashlib.sha256(f"{onnx_sha}|{imgsz}|{batch}|{short_version(trt_version).rsplit('.', 1)[0]}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.name}:{st.st_size}".encode())
    return h.hexdigest()[:16]


def calibration_batches(files: Sequence[Path], imgsz: int, batch: int) -> Iterator[np.ndarray]:
    """Network inputs exactly as the served preprocess makes them, `batch` images at a time.

    TensorRT 10 calibrates at the profile's opt shape, so every batch is full: a remainder
    smaller than `batch` is left out.
    """
    from yolo_triton.client import images
    from yolo_triton.pipeline import geometry

    if len(files) < batch:
        raise BuildError(f"INT8 calibration needs at least {batch} images (one batch at the opt batch size), "
                         f"found {len(files)}")
    canvases = np.empty((batch, imgsz, imgsz, 3), np.uint8)
    for start in range(0, len(files) - batch + 1, batch):
        for i, path in enumerate(files[start:start + batch]):
            geometry.letterbox(images.read(path), imgsz, out=canvases[i])
        yield geometry.to_pixels(canvases)


def layers_kept_in_float(layer_names: Sequence[str]) -> dict[str, str]:
    """Head layers that INT8 would hurt most, and the precision to keep them in.

    The class-score Sigmoid stays FP32 (scores near the threshold decide what is detected) and
    the DFL box-decoding convolution FP16 (box coordinates span 0..imgsz pixels, far beyond what
    one INT8 scale resolves). The head is the highest-numbered `/model.N/` block.
    """
    blocks = [int(m.group(1)) for n in layer_names if (m := re.search(r"/model\.(\d+)/", n))]
    if not blocks:
        return {}
    head = f"/model.{max(blocks)}/"
    keep = {}
    for n in layer_names:
        if head not in n:
            continue
        if n.rsplit("/", 1)[-1].startswith("Sigmoid"):
            keep[n] = "float32"
        elif "/dfl/" in n and n.endswith("Conv"):
            keep[n] = "float16"
    return keep


# ---------------------------------------------------------------------------------------------
# Plans on disk: sidecars, the config's cc map, freshness, servability
# ---------------------------------------------------------------------------------------------


def _detector_dir(repo: Path) -> Path:
    return repo / TRT_VARIANT.detector


def read_sidecars(version_dir: Path) -> list[dict]:
    """Sidecars of plans that exist, newest first; unreadable ones are ignored."""
    out = []
    for f in version_dir.glob("model.*.json"):
        try:
            meta = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if (isinstance(meta, dict) and {"plan", "compute_capability"} <= meta.keys()
                and (version_dir / str(meta["plan"])).is_file()):
            out.append(meta)
    return sorted(out, key=lambda m: str(m.get("built_at", "")), reverse=True)


def cc_map(sidecars: Sequence[dict], onnx_sha: str | None) -> dict[str, str]:
    """Compute capability -> plan file, newest plan per capability, built from this ONNX only."""
    out: dict[str, str] = {}
    for meta in sidecars:  # newest first
        if onnx_sha is not None and meta.get("onnx_sha256") != onnx_sha:
            continue
        out.setdefault(str(meta["compute_capability"]), str(meta["plan"]))
    return out


def apply_plans(repo: Path, onnx_sha: str | None) -> dict[str, str]:
    """Point detector_trt's cc_model_filenames at the plans on disk; returns the map written.

    Runs on every build-engines (config rendering knows nothing of plans), so plans built
    earlier on other GPUs stay mapped while they match the current ONNX.
    """
    det = _detector_dir(repo)
    path = det / "config.pbtxt"
    if not path.is_file():
        return {}
    mapping = cc_map(read_sidecars(det / "1"), onnx_sha)
    cfg = repository.parse(path.read_text())
    if dict(cfg.cc_model_filenames) != mapping:
        cfg.cc_model_filenames.clear()
        cfg.cc_model_filenames.update(mapping)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(repository.render(cfg))
        tmp.replace(path)
    return mapping


def freshness_key(meta: dict) -> tuple:
    """What makes a built plan equal to the one asked for (workspace and builder don't)."""
    return tuple(meta.get(k) for k in ("onnx_sha256", "precision", "imgsz", "batch", "input", "tensorrt",
                                       "gpu", "compute_capability", "calibration"))


def plan_problem(detector_dir: Path, gpus: list[Gpu] | None = None, server_trt: str | None = None,
                 probe: bool = True) -> str | None:
    """Why Triton here could not load detector_trt, or None when it can (or it cannot be told).

    `gpus` / `server_trt` default to what this machine reports (when `probe`); a check that
    cannot be made is not held against the plan: Triton then has the last word.
    """
    cfg_path = detector_dir / "config.pbtxt"
    if not cfg_path.is_file():
        return f"{detector_dir.name}/config.pbtxt missing (make build-engines)"
    mapping = dict(repository.parse(cfg_path.read_text()).cc_model_filenames)
    if not mapping:
        return ("no TensorRT plan built (make build-engines where TensorRT and the serving GPU are; "
                "docs/ngc.md)")
    if gpus is None and probe:
        gpus = visible_gpus()
    if server_trt is None and probe:
        server_trt = installed_trt_version()
    metas = {m["plan"]: m for m in read_sidecars(detector_dir / "1")}
    built_for = ", ".join(f"{metas.get(p, {}).get('gpu', '?')} ({cc})" for cc, p in sorted(mapping.items()))
    if gpus is None:
        return None if any((detector_dir / "1" / p).is_file() for p in mapping.values()) else (
            "the TensorRT plans named in the config are missing (make build-engines)")
    for gpu in gpus:
        plan = mapping.get(gpu.cc)
        if plan is None:
            return (f"no TensorRT plan for {gpu.name} (compute capability {gpu.cc}); plans exist for {built_for}: "
                    "make build-engines on this machine")
        if not (detector_dir / "1" / plan).is_file():
            return f"{detector_dir.name}/1/{plan} is missing (make build-engines)"
        meta = metas.get(plan, {})
        if meta.get("gpu") and meta["gpu"] != gpu.name:
            return (f"the TensorRT plan for compute capability {gpu.cc} was built on {meta['gpu']}, not "
                    f"{gpu.name}: make build-engines on this machine")
        if server_trt and meta.get("tensorrt") and meta["tensorrt"] != server_trt:
            return (f"{plan} was built with TensorRT {meta['tensorrt']} but this server has TensorRT {server_trt}: "
                    "rebuild with the TensorRT of the serving container")
    return None


# ---------------------------------------------------------------------------------------------
# The builders (the only code that touches TensorRT)
# ---------------------------------------------------------------------------------------------


def _build_python(s: BuildSettings, calib_files: Sequence[Path] = ()) -> None:
    """Build with the TensorRT 10 Python API; writes s.plan and updates the timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode, no flag needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(s.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {s.onnx.name}: {errors}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [s.input_name]:
        raise BuildError(f"{s.onnx.name} has inputs {names}, the config declares [{s.input_name!r}]")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_mib << 20)
    for flag in s.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    shapes = s.shapes
    profile.set_shape(s.input_name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    cached = s.timing_cache.read_bytes() if s.timing_cache and s.timing_cache.is_file() else b""
    timing = config.create_timing_cache(cached)
    config.set_timing_cache(timing, False)  # ignore_mismatch=False: a cache from another device is not used

    calibrator = None
    if s.precision == "int8":
        calibrator = config.int8_calibrator = _calibrator(trt, s, calib_files)
        keep = layers_kept_in_float([network.get_layer(i).name for i in range(network.num_layers)])
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name in keep:
                dtype = trt.float32 if keep[layer.name] == "float32" else trt.float16
                layer.precision = dtype
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, dtype)
        if keep:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)

    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        raise BuildError(f"INT8 calibration failed: {calibrator.error}")
    if serialized is None:
        raise BuildError("TensorRT could not build the engine (its log above says why)")
    s.plan.write_bytes(bytes(serialized))
    if s.timing_cache is not None:
        s.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


def _calibrator(trt, s: BuildSettings, files: Sequence[Path]):  # noqa: ANN001, ANN202 - tensorrt types
    """An INT8 calibrator fed with letterboxed images, caching its table in s.calib_cache.

    MinMax rather than entropy calibration: output0 carries box coordinates (0..imgsz pixels)
    next to class scores (0..1), and entropy calibration clips the large box values.
    """
    import torch

    batches = calibration_batches(files, s.imgsz, s.opt_batch) if files else iter(())
    cache = s.calib_cache

    class Calibrator(trt.IInt8MinMaxCalibrator):
        def __init__(self) -> None:
            trt.IInt8MinMaxCalibrator.__init__(self)
            self.device = torch.empty(s.shapes["opt"], dtype=torch.float32, device="cuda")
            self.error: Exception | None = None  # raised after the build: not through TensorRT's callback

        def get_batch_size(self) -> int:
            return s.opt_batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(batches, None)
            except Exception as e:  # noqa: BLE001 - an unreadable image: stop calibrating, report after
                self.error = e
                return None
            if batch is None:
                return None
            self.device.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, data: bytes) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

    return Calibrator()


def _run_trtexec(argv: list[str], log: Path) -> str:
    """Run trtexec, keep its log next to the plans, return the log text."""
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in text.splitlines()[-5:])
        raise BuildError(f"trtexec exited with {proc.returncode} after {time.monotonic() - started:.0f}s "
                         f"(log: {log}): {tail}")
    return text


# ---------------------------------------------------------------------------------------------
# The entry point build-engines calls
# ---------------------------------------------------------------------------------------------


def build_for_repository(onnx: Path, facts: ModelFacts, repo: Path, precision: str, calib_images: Path | None,
                         *, opt_batch: int = repository.TRT_OPT_BATCH, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                         builder: str = "auto", force: bool = False) -> str:
    """Build (or keep) the plan for this machine's GPU; one line saying what happened and why.

    Never raises for a machine that cannot build: everything else build-engines made stays valid,
    and the line says what was skipped.
    """
    try:
        builder_flags(precision)
        profile_shapes(facts.imgsz, opt_batch)
    except ValueError as e:
        return f"{SKIPPED}: {e}"
    onnx_sha = file_sha256(onnx)
    mapped = apply_plans(repo, onnx_sha)
    kept = f"; plans built earlier stay mapped for compute capability {', '.join(sorted(mapped))}" if mapped else ""

    py_version, py_why = python_trt_version() if builder != "trtexec" else (None, "not asked for")
    trtexec = find_trtexec() if builder != "python" else None
    det = _detector_dir(repo)
    calib_files: list[Path] = []
    if precision == "int8" and calib_images is not None:
        try:
            calib_files = calibration_images(calib_images)
        except BuildError as e:
            return f"{SKIPPED}: {e}"
    if precision == "int8" and calib_images is None:
        return f"{SKIPPED}: INT8 needs --calib-images (a folder of representative images){kept}"

    # The calibration cache depends on the TensorRT version, which depends on the builder: decide
    # the builder first with an optimistic view of the cache, then check the cache really exists.
    kind, why = choose_builder(builder, py_version, py_why, trtexec, precision, calib_cache_exists=True)
    if kind is None:
        return f"{SKIPPED}: {why}; the trt variant will not be served, everything else is built{kept}"
    trt_version = py_version if kind == "python" else _trtexec_version(trtexec)
    if trt_version is None:
        return f"{SKIPPED}: could not tell the TensorRT version of {trtexec}{kept}"

    gpus = _build_device()
    if not gpus:
        return f"{SKIPPED}: TensorRT {trt_version} is installed but no NVIDIA GPU is visible{kept}"
    gpu = gpus[0]

    calib_cache = None
    if precision == "int8":
        digest = calibration_digest(onnx_sha, calib_files, facts.imgsz, opt_batch, trt_version)
        calib_cache = det / f"calibration.{digest}.cache"
        kind, why = choose_builder(kind, py_version, py_why, trtexec, precision, calib_cache.is_file())
        if kind is None:
            return f"{SKIPPED}: {why}{kept}"
        if not calib_cache.is_file() and len(calib_files) < opt_batch:
            return (f"{SKIPPED}: INT8 calibration needs at least {opt_batch} images (one batch at the opt batch "
                    f"size), {calib_images} has {len(calib_files)}{kept}")

    stem = plan_stem(gpu, trt_version)
    settings = BuildSettings(
        onnx=onnx, plan=det / "1" / f"{stem}.plan", imgsz=facts.imgsz, precision=precision, opt_batch=opt_batch,
        workspace_mib=workspace_mib, timing_cache=det / f"timing.{stem.removeprefix('model.')}.cache",
        calib_cache=calib_cache,
    )
    meta = _sidecar(settings, gpu, trt_version, onnx_sha, kind)
    sidecar = settings.plan.with_suffix(".json")
    old = _read_json(sidecar)
    if not force and settings.plan.is_file() and old and freshness_key(old) == freshness_key(meta):
        apply_plans(repo, onnx_sha)
        return (f"TensorRT plan up to date: {_describe(meta)} -> "
                f"{settings.plan.relative_to(repo)}")

    started = time.monotonic()
    tmp_plan = settings.plan.with_name(f".{settings.plan.name}.tmp{os.getpid()}")
    building = dataclasses.replace(settings, plan=tmp_plan)
    try:
        settings.plan.parent.mkdir(parents=True, exist_ok=True)
        if kind == "python":
            _build_python(building, calib_files)
        else:
            text = _run_trtexec(trtexec_argv(trtexec, building), det / f"trtexec.{stem.removeprefix('model.')}.log")
            device = parse_trtexec_device(text)
            if device and device != (gpu.name, gpu.cc):
                raise BuildError(f"trtexec built on {device[0]} ({device[1]}), expected {gpu.name} ({gpu.cc}): "
                                 "set CUDA_VISIBLE_DEVICES to the serving GPU")
        if not tmp_plan.is_file() or tmp_plan.stat().st_size == 0:
            raise BuildError("the builder reported success but wrote no plan")
        tmp_plan.replace(settings.plan)
    except Exception as e:  # noqa: BLE001 - any failure: say it in one line, leave the rest of the repo usable
        tmp_plan.unlink(missing_ok=True)
        return f"TensorRT plan build FAILED ({kind}, {_describe(meta)}): {type(e).__name__}: {e}{kept}"
    meta["built_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta["build_seconds"] = round(time.monotonic() - started, 1)
    sidecar.write_text(json.dumps(meta, indent=1))
    apply_plans(repo, onnx_sha)
    server_trt = installed_trt_version()
    warning = (f"; WARNING: this machine's libnvinfer is TensorRT {server_trt}, so a Triton here cannot load it"
               if server_trt and server_trt != trt_version else "")
    return (f"TensorRT plan built with {kind} in {meta['build_seconds']:.0f}s: {_describe(meta)} -> "
            f"{settings.plan.relative_to(repo)} ({settings.plan.stat().st_size / 1e6:.1f} MB){warning}")


def _build_device() -> list[Gpu]:
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


def _trtexec_version(trtexec: str | None) -> str | None:
    if trtexec is None:
        return None
    try:
        out = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_trtexec_version(out.stdout + out.stderr)


def _sidecar(s: BuildSettings, gpu: Gpu, trt_version: str, onnx_sha: str, kind: str) -> dict:
    shapes = s.shapes
    return {
        "plan": s.plan.name,
        "gpu": gpu.name,
        "compute_capability": gpu.cc,
        "tensorrt": trt_version,
        "precision": s.precision,
        "imgsz": s.imgsz,
        "batch": [shapes["min"][0], shapes["opt"][0], shapes["max"][0]],
        "input": s.input_name,
        "onnx_sha256": onnx_sha,
        "calibration": s.calib_cache.name if s.calib_cache is not None else None,
        "builder": kind,
        "workspace_mib": s.workspace_mib,
    }


def _describe(meta: dict) -> str:
    lo, opt, hi = meta["batch"]
    return (f"{meta['precision'].upper()} for {meta['gpu']} (compute capability {meta['compute_capability']}, "
            f"TensorRT {meta['tensorrt']}), batch {lo}..{hi} (opt {opt}), {meta['imgsz']}x{meta['imgsz']}")


def _read_json(path: Path) -> dict | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
