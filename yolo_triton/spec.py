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


# What clients send and receive (the ensembles' interface). A request carries its images once,
# as exactly one of IMAGE (decoded BGR pixels, one size per request) or IMAGE_BYTES (one encoded
# JPEG/PNG/WebP file per image, any sizes, decoded on the server: pipeline/encoded.py). Both are
# optional in the configs so that either may be left out; the first python step refuses a request
# that sends both or neither.
IMAGE = TensorSpec("IMAGE", "uint8", (-1, -1, 3), optional=True)
IMAGE_BYTES = TensorSpec("IMAGE_BYTES", "bytes", (1,), optional=True)
IMAGE_INPUTS = (IMAGE, IMAGE_BYTES)
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

# Triton's own per-model counters on the metrics port, and the signal the autoscaler scales on
# (deploy/k8s, yolo_triton.perf.scale): queue time per request = rate(queue) / rate(successes).
# It is read on the model that queues: the python model behind the ensemble clients call (its
# dynamic batcher holds the waiting requests); an ensemble's own queue counter stays near zero.
TRITON_QUEUE_METRIC = "nv_inference_queue_duration_us"  # {model, version}: microseconds waited in the queue
TRITON_SUCCESS_METRIC = "nv_inference_request_success"  # {model, version}: requests answered
QUEUED_MODELS = "pipeline_.*|detector_.*"  # regex on the `model` label: the models that run the network
QUEUE_PER_REQUEST_RULE = "yolo_triton:queue_us_per_request"  # Prometheus recording rule, per replica
QUEUE_PER_REQUEST_METRIC = "triton_queue_us_per_request"  # what prometheus-adapter serves the HPA

# A black VGA frame: what each stage object runs once in initialize (CUDA graphs, ONNX Runtime's
# lazy set-up) and what Triton sends every python model once more at load (`model_warmup`), so
# that no client request pays for a first execute() (docs/architecture.md).
WARMUP_FRAME = (480, 640, 3)

# Bounds that keep one request from exhausting the server (see validation.py).
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 40_000_000
MAX_BATCH = 64
# IMAGE_BYTES: the encodings the server decodes, and the most bytes one encoded image may have
# (a 8192x4883 JPEG at quality 100 is about 25 MB). Decoded dimensions are bounded by the two
# pixel limits above, read from the file's header before anything is decoded.
ENCODED_FORMATS = ("jpeg", "png", "webp")
MAX_ENCODED_BYTES = 32 << 20
# IMAGE_BYTES: the most pixels one request's files may decode to together, also read from their
# headers first. A request of pixels holds what it sent; one of files holds up to a thousand times
# its size once decoded (64 small PNGs of 40 M pixels each: 8 MB sent, 7.7 GB decoded, 33 s of
# decoding in one stub). 64 frames of 1920x1080 fit (133 M), as do four images at the per-image limit.
MAX_REQUEST_PIXELS = 160_000_000
# JPEG: a progressive decoder passes over the whole image once per scan, and the standard lets a
# scan be a few bytes, so 125 KB of one 16 M pixel image repeating its last scan took OpenCV 12.5 s
# (libjpeg-turbo's LJT-01-003). libjpeg and mozjpeg write about ten; a 40 M pixel file of 236 KB
# decoded in 0.62 s with its ten, 0.91 s with 32, 2.99 s with 100 (NVIDIA DALI caps at 500).
# Marker segments of any kind are capped too: each costs the header walk a step.
MAX_JPEG_SCANS = 32
MAX_JPEG_SEGMENTS = 1024
MAX_PNG_CHUNKS = 65536  # encoders split the data into 8-64 KB chunks: 32 MiB is at most a few thousand


@dataclass(frozen=True)
class ModelSpec:
    """One model directory of the repository and its interface."""

    name: str
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = ""

    def renamed(self, name: str) -> ModelSpec:
        """The same interface under another model name (the GPU twin of a step)."""
        return ModelSpec(name, self.backend, self.inputs, self.outputs, self.platform)


PREPROCESS = ModelSpec("preprocess", "python", IMAGE_INPUTS, (PIXELS, LETTERBOX))
POSTPROCESS = ModelSpec(
    "postprocess",
    "python",
    (RAW, LETTERBOX, CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, MULTI_LABEL),
    (BOXES, SCORES, CLASSES, NUM_DETECTIONS),
)
OPTIONS = (CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, MULTI_LABEL)  # per-request, defaults above
ENSEMBLE_INPUTS = (*IMAGE_INPUTS, *OPTIONS)
ENSEMBLE_OUTPUTS = (BOXES, SCORES, CLASSES, NUM_DETECTIONS)


@dataclass(frozen=True)
class Runtime:
    """How the network runs: the detector model of a variant, and what the server needs for it.

    `backend` is the detector's Triton backend: "python" (a python model of this package runs the
    network: ONNX Runtime on the CPU, or PyTorch FP16 on the GPU), or a native one
    ("onnxruntime", "tensorrt": NVIDIA's container). `accelerator` is an execution accelerator
    inside that backend (ONNX Runtime's TensorRT provider). `artefact` is the file the detector
    loads, relative to its version folder. `params` go into the detector's config verbatim.
    `precision` is the network's arithmetic: "fp32", "fp16", or "int8" (quantised at build time,
    yolo_triton.repository.quantize). A precision other than the checkpoint's own is served as the
    alias only after the build's accuracy gate passed for it (yolo_triton.repository.gate).
    """

    key: str
    detector: str
    device: str  # "cpu" | "gpu"
    backend: str
    artefact: str
    accelerator: str = ""
    params: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    precision: str = "fp32"

    @property
    def gated(self) -> bool:
        """INT8 changes the numbers: `yolov8n` points here only if the recorded gate passed."""
        return self.precision == "int8"

    @property
    def needs(self) -> tuple[str, ...]:
        """What the server must offer: a backend directory other than python, and "gpu"."""
        native = () if self.backend == "python" else (self.backend,)
        return native + (("gpu",) if self.device == "gpu" else ())

    @property
    def in_python(self) -> bool:
        """The network runs inside a python model of this package (so a fused pipeline can too)."""
        return self.backend == "python"


@dataclass(frozen=True)
class Variant:
    """One served pipeline: a point on the axes device x runtime x topology.

    Topology "staged" is the design card's ensemble: python preprocess (letterbox) -> detector ->
    python postprocess (decode, NMS, boxes back to the image). "fused" is one python model (the
    pipeline) running the same stage objects in one execute(): one Triton<->stub hop instead of
    three and no intermediate tensors, which is what a request costs beyond the network on a fast
    GPU or on two CPU cores. The pipeline loads the artefact of the runtime's detector folder. A
    one-step ensemble stands in front of it, with the same interface (it is not decoration:
    tritonserver 2.51 never answers a zero-byte, batch-0 request sent straight to a python model
    with dynamic batching, while an ensemble refuses it at once).
    """

    runtime: Runtime
    topology: str = "staged"  # "staged" | "fused"

    @property
    def key(self) -> str:
        return self.runtime.key + ("_fused" if self.fused else "")

    @property
    def ensemble(self) -> str:
        """The name clients call."""
        return f"{ALIAS}_{self.key}"

    @property
    def fused(self) -> bool:
        return self.topology == "fused"

    @property
    def device(self) -> str:
        return self.runtime.device

    @property
    def needs(self) -> tuple[str, ...]:
        return self.runtime.needs

    @property
    def detector(self) -> str:
        return self.runtime.detector

    @property
    def backend(self) -> str:
        return self.runtime.backend

    @property
    def artefact(self) -> str:
        return self.runtime.artefact

    @property
    def extra(self) -> dict[str, str]:
        return self.runtime.params

    @property
    def steps_device(self) -> str:
        """Where the staged ensemble's python steps run: with the network when it runs in python
        (torch is there); on the CPU next to a native detector (NVIDIA's container has NumPy and
        OpenCV for them, not torch)."""
        return self.device if self.runtime.in_python else "cpu"

    @property
    def preprocess(self) -> str:
        return PREPROCESS.name + ("_gpu" if self.steps_device == "gpu" else "")

    @property
    def postprocess(self) -> str:
        return POSTPROCESS.name + ("_gpu" if self.steps_device == "gpu" else "")

    @property
    def pipeline(self) -> str:
        """The fused variant's python model ("" when staged)."""
        return f"pipeline_{self.runtime.key}" if self.fused else ""

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the server loads for this variant."""
        if self.fused:
            return (self.pipeline, self.ensemble)
        return (self.preprocess, self.detector, self.postprocess, self.ensemble)

    @property
    def stages(self) -> dict[str, str]:
        """Composing model -> stage (spec.STAGES), for per-stage statistics of a staged variant.
        A fused variant's stages are in its pipeline model's custom metrics."""
        if self.fused:
            return {}
        return {self.preprocess: "preprocess", self.detector: "network", self.postprocess: "postprocess"}


ALIAS = "yolov8n"
# The network alone, for Ultralytics' own Triton client: `YOLO("grpc://HOST:8001/yolov8n_network",
# task="detect")`. Its TritonRemoteModel letterboxes, decodes and runs NMS itself, so it sends the
# letterboxed FP32 `images` (PIXELS) and reads the raw `output0` (RAW); it maps only FP32, FP16 and
# UINT8 inputs, so it cannot call the ensembles (their options are INT32 and BOOL). At launch this
# one-step ensemble is pointed at the detector of the fastest staged variant the server loads whose
# accuracy gate passed (serve.plan), as `yolov8n` is.
NETWORK_ALIAS = f"{ALIAS}_network"
# What the tensors mean, written into every ensemble's config parameters (and the network alias's
# Ultralytics metadata), so a client reading the config needs no other documentation.
CONVENTIONS = {
    "pixel_order": "BGR",  # IMAGE: decoded BGR uint8, as OpenCV reads files
    "box_format": "xyxy",  # BOXES: x1, y1, x2, y2
    "box_frame": "original image pixels",  # BOXES: in the frame of the IMAGE sent, not the letterbox
}
NETWORK_CONVENTIONS = {
    "pixel_order": "RGB",  # images: RGB float32 in [0, 1], NCHW, letterboxed with gray 114 to imgsz
    "box_format": "xywh",  # output0 rows 0-3: box centre and size, then one score row per class
    "box_frame": "letterboxed input pixels",
}
# CUDA-graph batch sizes of the GPU detectors (a batch is padded up to the next one).
CUDA_GRAPH_BATCHES = "1,2,4,8,16,32,64"
# The GPU detectors compile the network with TorchInductor before capturing its graphs ("0": the
# exported network as is). Measured on an H200 at 640: 0.46 ms vs 0.94 ms per batch-1 replay.
GPU_EXTRA = {"cuda_graph_batches": CUDA_GRAPH_BATCHES, "torch_compile": "1"}
# Instances of the fused GPU pipeline. Saturated, an execute of 64 images spends about a fifth of
# its cycle in Triton's copies in and out (compute input and output), with the GPU idle; a second
# stub runs its graphs meanwhile. Measured on an H100 in one run: 6131 img/s against 5599 with one
# (0.52x against 0.47x the raw network's batch 64), and c1 no slower. A third one, on an H200
# in four alternating runs, stayed within the spread of two (0.48/0.46x against 0.43/0.47x).
GPU_PIPELINE_INSTANCES = 2
# The GPU models that decode IMAGE_BYTES (preprocess_gpu, pipeline_gpu) decode JPEG on the GPU
# ("0": on the host). nvJPEG's planes are finished with libjpeg-turbo's arithmetic, and the result
# is checked against OpenCV at load: over one grey level off, the host decodes (docs/gpu.md).
GPU_JPEG = {"nvjpeg": "1"}

RUNTIMES: tuple[Runtime, ...] = (
    Runtime("ort", "detector_ort", "cpu", "python", "model.onnx"),
    # The same checkpoint quantised statically (QDQ, per-channel weights, the detect head in FP32).
    Runtime("ort_int8", "detector_ort_int8", "cpu", "python", "model.onnx", precision="int8"),
    Runtime("onnx", "detector_onnx", "cpu", "onnxruntime", "model.onnx"),
    Runtime("onnx_int8", "detector_onnx_int8", "cpu", "onnxruntime", "model.onnx", precision="int8"),
    Runtime("onnx_trt", "detector_onnx_trt", "gpu", "onnxruntime", "model.onnx", accelerator="tensorrt"),
    Runtime("gpu", "detector_torch", "gpu", "python", "model.pt2", params=GPU_EXTRA),  # torch.export program
    Runtime("trt", "detector_trt", "gpu", "tensorrt", "model.plan"),
)
VARIANTS: tuple[Variant, ...] = tuple(
    Variant(r, topology) for r in RUNTIMES for topology in ("staged", "fused") if topology == "staged" or r.in_python
)
# Fastest first: `yolov8n` is the first of these that the server can load. Measured (docs/benchmarks.md):
# on the H200 the fused GPU pipeline answered c1 in 2.1-2.3 ms against 5.5-6.4 ms for the staged GPU
# ensemble; on 2 CPU cores the fused CPU pipeline answered c1 sooner than the staged one in every
# run. The native-backend variants (NVIDIA's container) were not measured here: a TensorRT plan's
# network is faster than PyTorch's, behind the staged ensemble's glue, so they sit between. On the
# CPU, INT8 ran the network in 0.6-0.7x FP32's time on 2 AVX2 cores and in 0.77-0.81x on 2 AMX
# cores, at 320 and 640; an INT8 variant is taken only when its gate passed (serve.plan.plan_models),
# else the next one.
FASTEST_FIRST = ("gpu_fused", "trt", "onnx_trt", "gpu", "ort_int8_fused", "ort_fused", "onnx_int8", "onnx",
                 "ort_int8", "ort")


def variant(key: str) -> Variant:
    for v in VARIANTS:
        if v.key == key:
            return v
    raise KeyError(f"unknown variant {key!r}; known: {', '.join(v.key for v in VARIANTS)}")


def network_tensors(imgsz: int, num_outputs: int, num_anchors: int) -> tuple[TensorSpec, TensorSpec]:
    """PIXELS and RAW at a checkpoint's concrete dims."""
    return PIXELS.with_dims((3, imgsz, imgsz)), RAW.with_dims((num_outputs, num_anchors))


def detector_spec(v: Variant, imgsz: int, num_outputs: int, num_anchors: int) -> ModelSpec:
    """The detector's interface for a given checkpoint: native backends check exact dims."""
    pixels, raw = network_tensors(imgsz, num_outputs, num_anchors)
    return ModelSpec(v.detector, v.backend, (pixels,), (raw,))
