"""Building the plan for this machine's GPU: the TensorRT Python API or trtexec, and the one-line verdict.

Builders: the TensorRT Python API when `tensorrt` imports, else `trtexec` (PATH, $TRTEXEC, or
where NVIDIA's containers keep it). Only `_build_python` and `_run_trtexec` (with the INT8
calibrator) touch TensorRT; every decision they act on is a plain function elsewhere in this
package. A plan is written aside and renamed, so a failed build never leaves half a plan.

Written against the TensorRT 10 Python API and trtexec documentation, and not yet run where this
project is developed (no TensorRT there): tests/test_tensorrt.py builds a real plan only where
TensorRT imports. See docs/ngc.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from yolo_triton.repository import configs as repository
from yolo_triton.repository.configs import ModelFacts
from yolo_triton.repository.tensorrt.calibration import (
    calibration_digest,
    calibration_images,
    int8_calibrator,
    layers_kept_in_float,
)
from yolo_triton.repository.tensorrt.gpus import (
    Gpu,
    build_device,
    choose_builder,
    find_trtexec,
    installed_trt_version,
    parse_trtexec_device,
    python_trt_version,
    trtexec_version,
)
from yolo_triton.repository.tensorrt.plans import (
    apply_plans,
    file_sha256,
    freshness_key,
    plan_stem,
    read_json,
    trt_detector_dir,
)
from yolo_triton.repository.tensorrt.settings import (
    DEFAULT_WORKSPACE_MIB,
    BuildError,
    BuildSettings,
    builder_flags,
    profile_shapes,
    trtexec_argv,
)

SKIPPED = "TensorRT plans skipped"


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
        calibrator = config.int8_calibrator = int8_calibrator(trt, s, calib_files)
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
    det = trt_detector_dir(repo)
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
    trt_version = py_version if kind == "python" else trtexec_version(trtexec)
    if trt_version is None:
        return f"{SKIPPED}: could not tell the TensorRT version of {trtexec}{kept}"

    gpus = build_device()
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
    old = read_json(sidecar)
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


def _sidecar(s: BuildSettings, gpu: Gpu, trt_version: str, onnx_sha: str, kind: str) -> dict:
    """What the plan was built from and for: `freshness_key` and `plan_problem` read it back."""
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
    """The plan in words, for the one line build-engines prints."""
    lo, opt, hi = meta["batch"]
    return (f"{meta['precision'].upper()} for {meta['gpu']} (compute capability {meta['compute_capability']}, "
            f"TensorRT {meta['tensorrt']}), batch {lo}..{hi} (opt {opt}), {meta['imgsz']}x{meta['imgsz']}")
