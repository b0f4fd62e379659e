"""TensorRT plans for the native `tensorrt_plan` detector, and whether this machine can serve them.

One job a module: `gpus` (this machine's GPUs, TensorRT and builder), `settings` (what a build is
asked for, in plain values), `calibration` (INT8), `plans` (plans on disk, the config's
compute-capability map, servability) and `build` (the builders and build-engines' entry point).
Re-exported here: what build-engines, the launcher and tests/test_tensorrt.py call.
"""

from yolo_triton.repository.tensorrt.build import build_for_repository
from yolo_triton.repository.tensorrt.calibration import (
    calibration_batches,
    calibration_digest,
    calibration_images,
    layers_kept_in_float,
)
from yolo_triton.repository.tensorrt.gpus import (
    Gpu,
    choose_builder,
    find_trtexec,
    parse_nvidia_smi,
    parse_trtexec_device,
    parse_trtexec_version,
    python_trt_version,
    select_visible,
    short_version,
    trt_version_from_library,
)
from yolo_triton.repository.tensorrt.plans import apply_plans, file_sha256, plan_problem, plan_stem
from yolo_triton.repository.tensorrt.settings import (
    BuildError,
    BuildSettings,
    builder_flags,
    profile_shapes,
    trtexec_argv,
)

__all__ = [
    "BuildError",
    "BuildSettings",
    "Gpu",
    "apply_plans",
    "build_for_repository",
    "builder_flags",
    "calibration_batches",
    "calibration_digest",
    "calibration_images",
    "choose_builder",
    "file_sha256",
    "find_trtexec",
    "layers_kept_in_float",
    "parse_nvidia_smi",
    "parse_trtexec_device",
    "parse_trtexec_version",
    "plan_problem",
    "plan_stem",
    "profile_shapes",
    "python_trt_version",
    "select_visible",
    "short_version",
    "trt_version_from_library",
    "trtexec_argv",
]
