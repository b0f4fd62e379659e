"""The one declaration of every served model: names, tensors, shapes and dtypes.

Configs are rendered from these objects (`yolo_triton.repository`), the python-backend models
read their tensor names from them, and clients build requests from them, so a rename or a dtype
change happens here once and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_TRITON_DTYPES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "bytes": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as Triton sees it; `dims` excludes the batch dimension (-1 = any size)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def wire_dtype(self) -> str:
        """Datatype string of the inference protocol (what tritonclient's InferInput takes)."""
        return _TRITON_DTYPES[self.dtype]

    @property
    def config_dtype(self) -> str:
        return "TYPE_STRING" if self.dtype == "bytes" else f"TYPE_{self.wire_dtype}"

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "bytes" else np.dtype(self.dtype)

    def with_dims(self, dims: tuple[int, ...]) -> TensorSpec:
        return TensorSpec(self.name, self.dtype, dims, self.optional)


# What clients send and receive (the ensembles' interface).
IMAGE = TensorSpec("IMAGE", "uint8", (-1, -1, 3))
CONF_THRESHOLD = TensorSpec("CONF_THRESHOLD", "float32", (1,), optional=True)
IOU_THRESHOLD = TensorSpec("IOU_THRESHOLD", "float32", (1,), optional=True)
MAX_DETECTIONS = TensorSpec("MAX_DETECTIONS", "int32", (1,), optional=True)
# Every class above the threshold per box (Ultralytics' validator protocol), not just the best one.
MULTI_LABEL = TensorSpec("MULTI_LABEL", "bool", (1,), optional=True)
BOXES = TensorSpec("BOXES", "float32", (-1, 4))
SCORES = TensorSpec("SCORES", "float32", (-1,))
CLASSES = TensorSpec("CLASSES", "int32", (-1,))
NUM_DETECTIONS = TensorSpec("NUM_DETECTIONS", "int32", (1,))

# Between the steps. "images"/"output0" are the names Ultralytics' ONNX export gives.
PIXELS = TensorSpec("images", "float32", (3, -1, -1))
LETTERBOX = TensorSpec("LETTERBOX", "float32", (6,))  # gain_x, gain_y, pad_x, pad_y, orig_h, orig_w
RAW = TensorSpec("output0", "float32", (-1, -1))  # 4 box + nc class rows, one column per anchor

# Ultralytics' predict defaults: the thresholds a request gets when it sends none.
DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.7
DEFAULT_MAX_DET = 300

# Per-stage time, reported by every python model as Triton custom metrics (the metrics port,
# Prometheus text): counters summed over executions, flushed at most once a second.
STAGES = ("preprocess", "network", "postprocess")
STAGE_DURATION_METRIC = "yolo_triton_stage_duration_us"  # {model, stage}: microseconds spent in the stage
STAGE_EXECUTIONS_METRIC = "yolo_triton_executions_total"  # {model}: execute() calls
STAGE_IMAGES_METRIC = "yolo_triton_images_total"  # {model}: images those calls served

# Bounds that keep one request from exhausting the server (see validation.py).
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 40_000_000
MAX_BATCH = 64


@dataclass(frozen=True)
class ModelSpec:
    """One model directory of the repository and its interface."""

    name: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = ""


PREPROCESS = ModelSpec("preprocess", "python", (IMAGE,), (PIXELS, LETTERBOX))
POSTPROCESS = ModelSpec(
    "postprocess",
    "python",
    (RAW, LETTERBOX, CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, MULTI_LABEL),
    (BOXES, SCORES, CLASSES, NUM_DETECTIONS),
)
ENSEMBLE_INPUTS = (IMAGE, CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, MULTI_LABEL)
ENSEMBLE_OUTPUTS = (BOXES, SCORES, CLASSES, NUM_DETECTIONS)


@dataclass(frozen=True)
class Variant:
    """A detector runtime and the ensemble that wraps it with pre/post processing.

    `needs` names what the server must offer for the variant to load: a backend directory
    ("onnxruntime", "tensorrt"), "gpu", or nothing for the pure-python CPU default.
    `artefact` is the file the detector loads, relative to its version folder.

    A fused variant names a `pipeline`: one python model that runs letterbox, network and NMS in
    one execute() (the same shared functions as the staged steps), behind a one-step ensemble
    with the same interface. One Triton<->stub hop instead of three and no intermediate tensors:
    that glue is what a request costs beyond the network on a fast GPU or on two CPU cores. The
    pipeline loads the artefact of `detector`'s folder. (The ensemble in front is not decoration:
    tritonserver 2.51 never answers a zero-byte, batch-0 request sent straight to a python model
    with dynamic batching, while an ensemble refuses it at once.)
    """

    key: str
    detector: str
    backend: str
    artefact: str
    needs: tuple[str, ...] = ()
    preprocess: str = PREPROCESS.name
    postprocess: str = POSTPROCESS.name
    rank: int = 0  # higher wins when picking what `yolov8n` serves
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    pipeline: str = ""

    @property
    def ensemble(self) -> str:
        """The name clients call."""
        return f"{ALIAS}_{self.key}"

    @property
    def fused(self) -> bool:
        return bool(self.pipeline)

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the server loads for this variant."""
        if self.fused:
            return (self.pipeline, self.ensemble)
        return (self.preprocess, self.detector, self.postprocess, self.ensemble)

    @property
    def stages(self) -> dict[str, str]:
        """Composing model -> stage role, for per-stage statistics (a fused variant has none)."""
        if self.fused:
            return {}
        return {self.preprocess: "preprocess", self.detector: "detector", self.postprocess: "postprocess"}


ALIAS = "yolov8n"
# CUDA-graph batch sizes of the GPU detectors (a batch is padded up to the next one).
CUDA_GRAPH_BATCHES = "1,2,4,8,16,32,64"
# The GPU detectors compile the network with TorchInductor before capturing its graphs ("0": the
# exported network as is). Measured on an H200 at 640: 0.46 ms vs 0.94 ms per batch-1 replay.
GPU_EXTRA = {"cuda_graph_batches": CUDA_GRAPH_BATCHES, "torch_compile": "1"}

VARIANTS: tuple[Variant, ...] = (
    Variant("ort", "detector_ort", "python", "model.onnx", rank=10),
    Variant("onnx", "detector_onnx", "onnxruntime", "model.onnx", needs=("onnxruntime",), rank=20),
    Variant(
        "onnx_trt", "detector_onnx_trt", "onnxruntime", "model.onnx", needs=("onnxruntime", "gpu"), rank=30
    ),
    Variant(
        "gpu",
        "detector_torch",
        "python",
        "model.pt2",  # torch.export program (yolo_triton.gpu_export)
        needs=("gpu",),
        preprocess="preprocess_gpu",
        postprocess="postprocess_gpu",
        rank=40,
        extra=GPU_EXTRA,
    ),
    # Fused variants rank below the ensembles: `yolov8n` stays the staged pipeline, whose per-stage
    # statistics the measurement tools report; clients after the last millisecond call these by name.
    Variant("ort_fused", "detector_ort", "python", "model.onnx", rank=5, pipeline="pipeline_ort"),
    Variant(
        "gpu_fused",
        "detector_torch",
        "python",
        "model.pt2",
        needs=("gpu",),
        rank=35,
        pipeline="pipeline_gpu",
        extra=GPU_EXTRA,
    ),
    Variant("trt", "detector_trt", "tensorrt", "model.plan", needs=("tensorrt", "gpu"), rank=50),
)


def variant(key: str) -> Variant:
    for v in VARIANTS:
        if v.key == key:
            return v
    raise KeyError(f"unknown variant {key!r}; known: {', '.join(v.key for v in VARIANTS)}")


def detector_spec(v: Variant, imgsz: int, num_outputs: int, num_anchors: int) -> ModelSpec:
    """The detector's interface for a given checkpoint: native backends check exact dims."""
    pixels = PIXELS.with_dims((3, imgsz, imgsz))
    raw = RAW.with_dims((num_outputs, num_anchors))
    return ModelSpec(v.detector, v.backend, (pixels,), (raw,))
