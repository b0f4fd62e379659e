"""Render every config.pbtxt of the model repository from `spec` and the checkpoint's facts.

Configs are generated, not hand-written: the detector's dims depend on the checkpoint (input
size, number of classes), and the pre/post models must agree with the detector tensor for
tensor. Building them as `ModelConfig` protobufs means an invalid field fails here, at build
time, instead of at server start.

Batching choices (why the numbers are what they are):
- Every step has `max_batch_size = spec.MAX_BATCH` and a dynamic batcher, so concurrent
  requests flow through the whole ensemble as batches.
- IMAGE allows ragged batches: the python preprocess receives each request separately anyway,
  so images of different sizes can share one execute() call. IMAGE_BYTES needs no such flag:
  each batch item is one encoded file ([1] BYTES), whatever its size once decoded.
- No step waits to fill a batch (no queue delay, no preferred sizes): on the CPU a batch of N
  costs about N times one image (bench-cpu measures ~5% gained at batch 4), so a delay would
  only add latency at low load; under load, requests queue while a batch runs and the next
  execute() takes them all.
- One instance per CPU step: ONNX Runtime already uses every core for one batch, and more
  instances would only contend for them.

Every model but the ensembles is warmed up at load (`model_warmup`). The stage objects run
themselves once in initialize, yet on the 2-core CPU a python model's first request still took
28-59 ms more compute than its second, most of it outside execute() (the python backend's first
round trip); the first client request paid for it until Triton sent one itself (3-18 ms more
since; docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from yolo_triton import spec
from yolo_triton.pipeline import geometry
from yolo_triton.repository.facts import FACTS_FILE, STRIDES, ModelFacts, read_facts  # noqa: F401 - re-exported

_DTYPES = {
    "TYPE_BOOL": mc.TYPE_BOOL,
    "TYPE_UINT8": mc.TYPE_UINT8,
    "TYPE_INT32": mc.TYPE_INT32,
    "TYPE_INT64": mc.TYPE_INT64,
    "TYPE_FP16": mc.TYPE_FP16,
    "TYPE_FP32": mc.TYPE_FP32,
    "TYPE_STRING": mc.TYPE_STRING,
}
DETECTOR_QUEUE_DELAY_US = 2000
# TensorRT tunes its kernels for one batch size inside the profile's range: a mid-size batch, as
# the dynamic batcher forms under moderate load (max is spec.MAX_BATCH, min 1).
TRT_OPT_BATCH = 8
ORT_TRT_CACHE_DIR = "/tmp/yolo_triton_trt_cache"  # inside the serving container; ORT creates the last level
WARMUP_DIR = "warmup"  # the model folder's sub-folder Triton reads warm-up input files from


def _tensor(msg: mc.ModelInput | mc.ModelOutput, t: spec.TensorSpec) -> None:
    msg.name = t.name
    msg.data_type = _DTYPES[t.config_dtype]
    msg.dims.extend(t.dims)


def _base(model: spec.ModelSpec, max_batch: int = spec.MAX_BATCH) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=model.name, max_batch_size=max_batch)
    if model.backend:
        cfg.backend = model.backend
    if model.platform:
        cfg.platform = model.platform
    for t in model.inputs:
        i = cfg.input.add()
        _tensor(i, t)
        i.optional = t.optional
        if t is spec.IMAGE:
            i.allow_ragged_batch = True
    for t in model.outputs:
        _tensor(cfg.output.add(), t)
    return cfg


def _instances(cfg: mc.ModelConfig, gpu: bool, count: int = 1) -> None:
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(kind=kind, count=count)


def _facts_params(cfg: mc.ModelConfig, facts: ModelFacts) -> None:
    cfg.parameters["imgsz"].string_value = str(facts.imgsz)
    cfg.parameters["names"].string_value = json.dumps(list(facts.names))


def ultralytics_metadata(facts: ModelFacts) -> str:
    """The `metadata` parameter Ultralytics' TritonRemoteModel reads: a dict's repr, which it parses
    with ast.literal_eval, holding what its exporter writes (Ultralytics' Triton guide copies the
    ONNX export's metadata into the config the same way). Without it AutoBackend guesses 640 px
    and 999 class names.

    `batch` 1 with `dynamic` False is what makes Ultralytics read `imgsz` from here and letterbox to
    the full square the detector's fixed dims need (dynamic exports get imgsz from the caller and
    pad only to a multiple of the stride); it then sends a batch of images one request each."""
    meta = {
        "description": f"YOLOv8 network served by yolo-triton ({facts.source})",
        "stride": max(STRIDES),
        "task": "detect",
        "batch": 1,
        "imgsz": [facts.imgsz, facts.imgsz],
        "names": dict(enumerate(facts.names)),
        "args": {"batch": 1, "half": False, "dynamic": False, "nms": False},
        "channels": 3,
        "end2end": False,
        **spec.NETWORK_CONVENTIONS,
    }
    return repr(meta)


def _network_params(cfg: mc.ModelConfig, facts: ModelFacts) -> None:
    """What a client of the raw network needs: Ultralytics' metadata and the tensors' conventions."""
    cfg.parameters["metadata"].string_value = ultralytics_metadata(facts)
    for key, value in spec.NETWORK_CONVENTIONS.items():
        cfg.parameters[key].string_value = value


def _gpu_resident(cfg: mc.ModelConfig) -> None:
    """Python model on the GPU: inputs stay where the previous step left them (no host copy).

    Without this the python backend copies every GPU input to the host before execute().
    """
    cfg.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"


def python_config(model: spec.ModelSpec, role: str, device: str, facts: ModelFacts,
                  preferred: tuple[int, ...] = (), instances: int = 1) -> mc.ModelConfig:
    """A python model of this package: its `role` and `device` pick the stage objects it runs
    (yolo_triton.backend.roles); dynamic batching without delay (take what is queued)."""
    cfg = _base(model)
    db = cfg.dynamic_batching
    db.SetInParent()
    if preferred:  # CUDA-graph sizes: a batch padded up to one of them costs what it costs anyway
        db.preferred_batch_size.extend(preferred)
        db.max_queue_delay_microseconds = 0
    gpu = device == "gpu"
    _instances(cfg, gpu, instances)
    _facts_params(cfg, facts)
    cfg.parameters["role"].string_value = role
    cfg.parameters["device"].string_value = device
    if gpu:
        _gpu_resident(cfg)
        if role in ("preprocess", "pipeline"):  # the steps that decode IMAGE_BYTES
            for key, value in spec.GPU_JPEG.items():
                cfg.parameters[key].string_value = value
    _warmup(cfg, _warmup_inputs(model, facts))
    return cfg


def _warmup_inputs(model: spec.ModelSpec, facts: ModelFacts) -> list[spec.TensorSpec]:
    """A python model's warm-up request, at concrete dims: the warm-up frame where it takes
    images, zeros as the network's input or output, the frame's own LETTERBOX row (`warmup_files`)."""
    network = spec.network_tensors(facts.imgsz, facts.num_outputs, facts.num_anchors)
    concrete = {t.name: t for t in (spec.IMAGE.with_dims(spec.WARMUP_FRAME), *network)}
    return [concrete.get(t.name, t) for t in model.inputs if t.name in concrete or not t.optional]


def _letterbox_row(facts: ModelFacts) -> bytes:
    """The LETTERBOX row of the warm-up frame at this input size, row-major float32 bytes."""
    row = geometry.plan(spec.WARMUP_FRAME[0], spec.WARMUP_FRAME[1], facts.imgsz).as_array()
    return np.asarray(row, np.float32).tobytes()


# Warm-up inputs that zeros would not make valid, by input name: how each one's file is made.
_WARMUP_FILE_MAKERS = {spec.LETTERBOX.name: _letterbox_row}
WARMUP_FILE_INPUTS = tuple(_WARMUP_FILE_MAKERS)


def warmup_files(facts: ModelFacts) -> dict[str, bytes]:
    """The bytes of each of WARMUP_FILE_INPUTS, by input name (written into each model's WARMUP_DIR)."""
    return {name: make(facts) for name, make in _WARMUP_FILE_MAKERS.items()}


def _graph_sizes(runtime: spec.Runtime) -> tuple[int, ...]:
    sizes = runtime.params.get("cuda_graph_batches", "")
    return tuple(int(b) for b in sizes.split(",") if b)


def _artefact(cfg: mc.ModelConfig, runtime: spec.Runtime) -> None:
    """Where a python model finds the network: its runtime's detector folder (no copy of its own)."""
    cfg.parameters["artefact_model"].string_value = runtime.detector
    cfg.parameters["artefact"].string_value = runtime.artefact
    for key, value in runtime.params.items():
        cfg.parameters[key].string_value = value


def detector_config(v: spec.Variant, facts: ModelFacts) -> mc.ModelConfig:
    r = v.runtime
    model = spec.detector_spec(v, facts.imgsz, facts.num_outputs, facts.num_anchors)
    if r.in_python:
        cfg = python_config(model, "network", r.device, facts, _graph_sizes(r))
        _artefact(cfg, r)
        _network_params(cfg, facts)
        return cfg
    if r.backend == "tensorrt":
        model = spec.ModelSpec(model.name, "", model.inputs, model.outputs, platform="tensorrt_plan")
    cfg = _base(model)
    db = cfg.dynamic_batching  # native GPU backends gain from full batches: wait briefly for them
    db.preferred_batch_size.extend(b for b in (4, 8, 16, 32) if b <= spec.MAX_BATCH)
    db.max_queue_delay_microseconds = DETECTOR_QUEUE_DELAY_US
    _instances(cfg, r.device == "gpu")
    # tensorrt: plans are per GPU model and TensorRT version; yolo_triton.repository.tensorrt maps
    # each compute capability to its plan in cc_model_filenames. The default names a file never
    # written, so a GPU without a plan of its own fails to load instead of running another GPU's plan.
    cfg.default_model_filename = r.artefact
    if r.backend == "onnxruntime":
        # Threads: all cores for one batch; one instance (see module docstring).
        cfg.parameters["intra_op_thread_count"].string_value = "0"
        cfg.parameters["enable_mem_arena"].string_value = "1"
    if r.accelerator == "tensorrt":
        # ONNX Runtime builds the TensorRT engine itself, at load. An explicit profile makes that
        # one engine for batch 1..max instead of a rebuild whenever a larger batch arrives, and
        # the engine cache lets a restart reuse it. An unknown key fails the load: every key here
        # is one the onnxruntime backend of the 24.10 container accepts (docs/ngc.md).
        pixels = model.inputs[0]
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP16"
        acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
        acc.parameters["trt_engine_cache_enable"] = "1"
        acc.parameters["trt_engine_cache_path"] = ORT_TRT_CACHE_DIR
        for key, batch in (("min", 1), ("opt", TRT_OPT_BATCH), ("max", spec.MAX_BATCH)):
            acc.parameters[f"trt_profile_{key}_shapes"] = f"{pixels.name}:" + "x".join(
                str(d) for d in (batch, *pixels.dims))
    for key, value in r.params.items():
        cfg.parameters[key].string_value = value
    _network_params(cfg, facts)
    _warmup(cfg, model.inputs)
    return cfg


def fused_config(v: spec.Variant, facts: ModelFacts) -> mc.ModelConfig:
    """A fused variant's pipeline: one python model with the ensemble's interface (spec.Variant.pipeline)."""
    model = spec.ModelSpec(v.pipeline, "python", spec.ENSEMBLE_INPUTS, spec.ENSEMBLE_OUTPUTS)
    instances = spec.GPU_PIPELINE_INSTANCES if v.device == "gpu" else 1
    cfg = python_config(model, "pipeline", v.device, facts, _graph_sizes(v.runtime), instances)
    cfg.parameters["variant"].string_value = v.key
    _artefact(cfg, v.runtime)
    return cfg


def _warmup(cfg: mc.ModelConfig, inputs: Sequence[spec.TensorSpec]) -> None:
    """One request of one image that Triton runs on every instance at load, before the model is
    ready, so that no client request is the first: zeros, or the input's file (`warmup_files`)."""
    w = cfg.model_warmup.add(name="first_request", batch_size=1)
    for t in inputs:
        inp = w.inputs[t.name]
        inp.data_type = _DTYPES[t.config_dtype]
        inp.dims.extend(t.dims)
        if t.name in WARMUP_FILE_INPUTS:
            inp.input_data_file = t.name
        else:
            inp.zero_data = True


def ensemble_config(name: str, v: spec.Variant, facts: ModelFacts) -> mc.ModelConfig:
    cfg = _base(spec.ModelSpec(name, "", spec.ENSEMBLE_INPUTS, spec.ENSEMBLE_OUTPUTS, platform="ensemble"))
    _facts_params(cfg, facts)
    cfg.parameters["variant"].string_value = v.key
    for key, value in spec.CONVENTIONS.items():
        cfg.parameters[key].string_value = value
    steps = cfg.ensemble_scheduling
    if v.fused:  # one step, every tensor passed through
        step = steps.step.add(model_name=v.pipeline, model_version=-1)
        for t in spec.ENSEMBLE_INPUTS:
            step.input_map[t.name] = t.name
        for t in spec.ENSEMBLE_OUTPUTS:
            step.output_map[t.name] = t.name
        return cfg
    pre = steps.step.add(model_name=v.preprocess, model_version=-1)
    for t in spec.IMAGE_INPUTS:  # whichever the request carries: preprocess reads (and decodes) it
        pre.input_map[t.name] = t.name
    pre.output_map[spec.PIXELS.name] = "pixels"
    pre.output_map[spec.LETTERBOX.name] = "letterbox"
    det = steps.step.add(model_name=v.detector, model_version=-1)
    det.input_map[spec.PIXELS.name] = "pixels"
    det.output_map[spec.RAW.name] = "raw"
    post = steps.step.add(model_name=v.postprocess, model_version=-1)
    post.input_map[spec.RAW.name] = "raw"
    post.input_map[spec.LETTERBOX.name] = "letterbox"
    for t in spec.OPTIONS:  # per-request options go straight to postprocess
        post.input_map[t.name] = t.name
    for t in spec.ENSEMBLE_OUTPUTS:
        post.output_map[t.name] = t.name
    return cfg


_WHY = {
    "python_step": "pre/post: dynamic batching without delay (take what is queued), one instance: numpy work "
    "is short and ONNX Runtime needs the cores",
    "detector": "CPU detector: no queue delay (a CPU batch costs ~N single images, so waiting only adds "
    "latency; under load the queue forms batches by itself); one instance, because one ONNX Runtime run "
    "already uses every core",
    "native_detector": f"native detector: waits up to {DETECTOR_QUEUE_DELAY_US} us to fill a preferred batch "
    "(a GPU's cost per image falls with batch size)",
    "fused": "fused pipeline: dynamic batching without delay (take what is queued); one instance, because one "
    "ONNX Runtime run already uses every core",
    "fused_gpu": "fused pipeline: dynamic batching without delay (take what is queued), preferred sizes its "
    "CUDA-graph batch sizes; two instances: one runs its graphs while Triton copies the other's requests in and out",
    "gpu_detector": "GPU detector: preferred sizes are its CUDA-graph / engine batch sizes; one instance per GPU, "
    "whose stream is kept busy by the batcher",
    "ensemble": "ensemble: batching happens in the composing models; max_batch_size only bounds a request",
}


def render(cfg: mc.ModelConfig) -> str:
    """pbtxt with a header saying where it came from and why its batching is set as it is."""
    role = cfg.parameters["role"].string_value if "role" in cfg.parameters else ""
    gpu = any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group)
    if cfg.platform == "ensemble":
        why = _WHY["ensemble"]
    elif role == "pipeline":
        why = _WHY["fused_gpu" if gpu else "fused"]
    elif role in ("preprocess", "postprocess"):
        why = _WHY["python_step"]
    elif role == "network":
        why = _WHY["gpu_detector" if gpu else "detector"]
    else:
        why = _WHY["native_detector"]
    header = (
        "# Generated by `make build-engines` (yolo_triton.repository.configs from yolo_triton.spec); do not edit.\n"
        f"# Batching: {why}.\n"
    )
    return header + text_format.MessageToString(cfg)


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def all_configs(facts: ModelFacts) -> dict[str, mc.ModelConfig]:
    """Every model directory's config, keyed by model name (the alias is added at serve time)."""
    out: dict[str, mc.ModelConfig] = {}
    for v in spec.VARIANTS:
        if v.fused:
            out[v.pipeline] = fused_config(v, facts)
        else:
            steps = v.steps_device
            out[v.preprocess] = python_config(spec.PREPROCESS.renamed(v.preprocess), "preprocess", steps, facts)
            out[v.detector] = detector_config(v, facts)
            out[v.postprocess] = python_config(spec.POSTPROCESS.renamed(v.postprocess), "postprocess", steps, facts)
        out[v.ensemble] = ensemble_config(v.ensemble, v, facts)
    return out


MODEL_PY = '''"""Triton python model `{name}` ({role} on the {device}); generated by `make build-engines`.

The code is the installed package's: yolo_triton.backend.model reads this model's config (its
`role` and `device` parameters) and runs those stage objects. The server's Python must have the
package installed (`pip install yolo-triton[serve]`; the project's .venv has it).
"""

from yolo_triton.backend.model import TritonPythonModel  # noqa: F401
'''


def write(root: Path, facts: ModelFacts) -> None:
    """Write every config, each python model's model.py, and the facts file."""
    root.mkdir(parents=True, exist_ok=True)
    files = warmup_files(facts)
    for name, cfg in all_configs(facts).items():
        d = root / name
        (d / "1").mkdir(parents=True, exist_ok=True)
        _atomic_write(d / "config.pbtxt", render(cfg))
        for inp in (i for w in cfg.model_warmup for i in w.inputs.values() if i.input_data_file):
            (d / WARMUP_DIR).mkdir(exist_ok=True)
            _atomic_write_bytes(d / WARMUP_DIR / inp.input_data_file, files[inp.input_data_file])
        if cfg.backend == "python":
            role, device = cfg.parameters["role"].string_value, cfg.parameters["device"].string_value
            model_py = d / "1" / "model.py"
            if model_py.is_symlink():  # repositories built before model.py was generated
                model_py.unlink()
            _atomic_write(model_py, MODEL_PY.format(name=name, role=role, device=device.upper()))
    _atomic_write(root / FACTS_FILE, facts.to_json())


def write_alias(root: Path, v: spec.Variant) -> None:
    """Make `yolov8n` an ensemble identical to the chosen variant's."""
    cfg = parse((root / v.ensemble / "config.pbtxt").read_text())
    cfg.name = spec.ALIAS
    (root / spec.ALIAS / "1").mkdir(parents=True, exist_ok=True)
    _atomic_write(root / spec.ALIAS / "config.pbtxt", render(cfg))


def network_config(v: spec.Variant, facts: ModelFacts) -> mc.ModelConfig:
    """`spec.NETWORK_ALIAS`: a one-step ensemble in front of the variant's detector, with its
    interface (letterboxed FP32 `images` in, raw `output0` out) and Ultralytics' metadata."""
    det = spec.detector_spec(v, facts.imgsz, facts.num_outputs, facts.num_anchors)
    cfg = _base(spec.ModelSpec(spec.NETWORK_ALIAS, "", det.inputs, det.outputs, platform="ensemble"))
    _facts_params(cfg, facts)
    cfg.parameters["variant"].string_value = v.key
    _network_params(cfg, facts)
    step = cfg.ensemble_scheduling.step.add(model_name=v.detector, model_version=-1)
    step.input_map[spec.PIXELS.name] = spec.PIXELS.name
    step.output_map[spec.RAW.name] = spec.RAW.name
    return cfg


def write_network_alias(root: Path, v: spec.Variant) -> None:
    """Point `spec.NETWORK_ALIAS` at the detector of the staged variant `v`."""
    (root / spec.NETWORK_ALIAS / "1").mkdir(parents=True, exist_ok=True)
    _atomic_write(root / spec.NETWORK_ALIAS / "config.pbtxt", render(network_config(v, read_facts(root))))


def _atomic_write(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)

