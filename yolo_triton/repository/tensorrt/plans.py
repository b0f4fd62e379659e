"""Plans on disk: their names, their sidecars, the config's compute-capability map, and servability.

A serialized plan only runs on the GPU model and the TensorRT version that built it. So every
plan is named after both (`model.sm90.nvidia-h200.trt10.5.0.plan`) and has a JSON sidecar that
records what it was built from; `apply_plans` maps each compute capability to its plan in the
detector's `cc_model_filenames`, and `default_model_filename` names a file that never exists,
so a Triton on an unmapped GPU refuses to load rather than running another GPU's plan. The
launcher asks `plan_problem` before it loads the variant, and names the reason when it can't.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from yolo_triton import spec
from yolo_triton.repository import configs as repository
from yolo_triton.repository.tensorrt.gpus import Gpu, installed_trt_version, visible_gpus

TRT_VARIANT = spec.variant("trt")


def trt_detector_dir(repo: Path) -> Path:
    """detector_trt's folder in `repo`: the plans, their sidecars and caches live there."""
    return repo / TRT_VARIANT.detector


def plan_stem(gpu: Gpu, trt_version: str) -> str:
    """`model.sm90.nvidia-h200.trt10.5.0`: compute capability, GPU model and TensorRT version."""
    return f"model.{gpu.sm}.{gpu.slug}.trt{trt_version}"


def file_sha256(path: Path) -> str:
    """The identity of the ONNX a plan was built from, as its sidecar records it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`; None when it is missing, unreadable or not an object."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def read_sidecars(version_dir: Path) -> list[dict]:
    """Sidecars of plans that exist, newest first; unreadable ones are ignored."""
    out = []
    for f in version_dir.glob("model.*.json"):
        meta = read_json(f)
        if (meta is not None and {"plan", "compute_capability"} <= meta.keys()
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
    det = trt_detector_dir(repo)
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
