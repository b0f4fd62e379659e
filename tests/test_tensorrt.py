"""TensorRT plans and the NGC-container model entries.

Where TensorRT imports (NVIDIA's containers) a real plan is built and run against ONNX Runtime;
elsewhere those tests skip with the reason, and everything around them is tested here: the
builder settings and trtexec command line, plan naming and the per-GPU config map, the
launcher's decision, the generated configs against the model's tensors, and the skip path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from yolo_triton import spec
from yolo_triton.repository import configs as repository
from yolo_triton.repository import tensorrt as tb
from yolo_triton.repository.tensorrt import Gpu
from yolo_triton.repository.tensorrt import build as trt_build
from yolo_triton.serve import launcher as server

H200 = Gpu("0", "NVIDIA H200", "9.0", "GPU-aaaa1111")
A10 = Gpu("1", "NVIDIA A10", "8.6", "GPU-bbbb2222")
T4 = Gpu("2", "Tesla T4", "7.5", "GPU-cccc3333")
TRT = spec.variant("trt")
ORT_TRT = spec.variant("onnx_trt")

# Every TensorRT-accelerator key the onnxruntime backend of Triton 24.10 accepts; any other key
# makes the model fail to load ("unknown parameter ... for TensorRT Execution Accelerator").
ORT_TRT_KEYS = {
    "precision_mode", "max_workspace_size_bytes", "int8_calibration_table_name",
    "int8_use_native_calibration_table", "trt_engine_cache_enable", "trt_engine_cache_path",
    "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_dla_enable", "trt_dla_core",
    "trt_engine_cache_prefix", "trt_dump_subgraphs", "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback", "trt_timing_cache_enable",
    "trt_force_timing_cache", "trt_detailed_build_log", "trt_build_heuristics_enable", "trt_sparsity_enable",
    "trt_builder_optimization_level", "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes", "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable",
}


def _cfg(repo: Path, name: str):
    return repository.parse((repo / name / "config.pbtxt").read_text())


def _onnx(repo: Path) -> Path:
    return repo / spec.variant("ort").detector / "1" / "model.onnx"


def _tensorrt_here() -> bool:
    return tb.python_trt_version()[0] is not None or tb.find_trtexec() is not None


# --- settings, names and command lines (plain functions) ----------------------------------------


def test_plan_names_carry_gpu_model_and_tensorrt_version():
    assert tb.plan_stem(H200, "10.5.0") == "model.sm90.nvidia-h200.trt10.5.0"
    assert tb.plan_stem(T4, "10.3.0") == "model.sm75.tesla-t4.trt10.3.0"
    assert Gpu("0", "NVIDIA GeForce RTX 4090", "8.9").slug == "nvidia-geforce-rtx-4090"
    assert tb.short_version("10.5.0.18") == "10.5.0"
    assert tb.short_version("10.5") == "10.5.0"
    with pytest.raises(ValueError):
        tb.short_version("ten")


def test_profile_spans_batch_1_to_the_configs_max_batch():
    shapes = tb.profile_shapes(640, 8)
    assert shapes == {"min": (1, 3, 640, 640), "opt": (8, 3, 640, 640), "max": (spec.MAX_BATCH, 3, 640, 640)}
    for bad in ((640, 0), (640, spec.MAX_BATCH + 1), (600, 8), (0, 8)):
        with pytest.raises(ValueError):
            tb.profile_shapes(*bad)


def test_builder_flags_per_precision():
    assert tb.builder_flags("fp16") == ("FP16",)
    assert tb.builder_flags("fp32") == ()
    assert tb.builder_flags("int8") == ("INT8", "FP16")
    with pytest.raises(ValueError, match="precision must be one of"):
        tb.builder_flags("bf16")


def test_trtexec_command_line(tmp_path):
    s = tb.BuildSettings(onnx=tmp_path / "m.onnx", plan=tmp_path / "m.plan", imgsz=320, precision="fp16",
                         opt_batch=8, workspace_mib=2048, timing_cache=tmp_path / "t.cache")
    assert tb.trtexec_argv("trtexec", s) == [
        "trtexec",
        f"--onnx={tmp_path / 'm.onnx'}",
        f"--saveEngine={tmp_path / 'm.plan'}",
        "--minShapes=images:1x3x320x320",
        "--optShapes=images:8x3x320x320",
        f"--maxShapes=images:{spec.MAX_BATCH}x3x320x320",
        "--memPoolSize=workspace:2048M",
        "--skipInference",
        f"--timingCacheFile={tmp_path / 't.cache'}",
        "--fp16",
    ]
    fp32 = tb.trtexec_argv("trtexec", tb.BuildSettings(onnx=s.onnx, plan=s.plan, imgsz=320, precision="fp32"))
    assert not {"--fp16", "--int8"} & set(fp32)
    assert not any(a.startswith("--timingCacheFile") for a in fp32)
    int8 = tb.BuildSettings(onnx=s.onnx, plan=s.plan, imgsz=320, precision="int8", calib_cache=tmp_path / "c.cache")
    argv = tb.trtexec_argv("trtexec", int8)
    assert argv[-3:] == ["--int8", "--fp16", f"--calib={tmp_path / 'c.cache'}"]
    with pytest.raises(ValueError, match="calibration cache"):
        tb.trtexec_argv("trtexec", tb.BuildSettings(onnx=s.onnx, plan=s.plan, imgsz=320, precision="int8"))
    removed_in_trt10 = ("--workspace", "--explicitBatch", "--maxBatch", "--minTiming", "--buildOnly")
    assert not [a for a in argv if a.split("=")[0] in removed_in_trt10]


def test_trtexec_output_parsing():
    assert tb.parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100500] [b18] # trtexec --help") \
        == "10.5.0"
    assert tb.parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v101303] [b9]") == "10.13.3"
    assert tb.parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec") == "8.6.1"
    assert tb.parse_trtexec_version("[I] TensorRT version: 10.5.0") == "10.5.0"
    assert tb.parse_trtexec_version("usage: something else") is None
    log = "[I] === Device Information ===\n[I] Selected Device: NVIDIA H200\n[I] Compute Capability: 9.0\n"
    assert tb.parse_trtexec_device(log) == ("NVIDIA H200", "9.0")
    assert tb.parse_trtexec_device("no device lines") is None


def test_gpus_from_nvidia_smi_and_cuda_visible_devices():
    # The line format this query prints (seen on an H200 with driver 580; UUID changed).
    seen = "0, GPU-12345678-90ab-cdef-1234-567890abcdef, NVIDIA H200, 9.0\n"
    assert tb.parse_nvidia_smi(seen) == [Gpu("0", "NVIDIA H200", "9.0", "GPU-12345678-90ab-cdef-1234-567890abcdef")]
    text = "0, GPU-aaaa1111, NVIDIA H200, 9.0\n1, GPU-bbbb2222, NVIDIA A10, 8.6\n\nNo devices were found\n"
    gpus = tb.parse_nvidia_smi(text)
    assert gpus == [H200, A10]
    assert tb.select_visible(gpus, None) == gpus
    assert tb.select_visible(gpus, "1") == [A10]
    assert tb.select_visible(gpus, "GPU-bbbb,0") == [A10, H200]
    assert tb.select_visible(gpus, "") == []
    assert tb.select_visible(gpus, "0,7,1") == [H200]  # CUDA stops at the first unknown index
    assert tb.select_visible(gpus, "MIG-1234") is None  # cannot be mapped: not guessed
    assert tb.trt_version_from_library("libnvinfer.so.10.5.0") == "10.5.0"
    assert tb.trt_version_from_library("libnvinfer.so.10") is None


def test_builder_choice():
    assert tb.choose_builder("auto", "10.5.0", "", "/bin/trtexec", "fp16", False) == ("python", "")
    assert tb.choose_builder("auto", None, "not installed", "/bin/trtexec", "fp16", False) == ("trtexec", "")
    kind, why = tb.choose_builder("auto", None, "the tensorrt Python package is not installed", None, "fp16", False)
    assert kind is None and why == "the tensorrt Python package is not installed and trtexec is not on PATH"
    kind, why = tb.choose_builder("trtexec", "10.5.0", "", "/bin/trtexec", "int8", False)
    assert kind is None and "trtexec cannot calibrate" in why
    assert tb.choose_builder("trtexec", "10.5.0", "", "/bin/trtexec", "int8", True) == ("trtexec", "")
    assert tb.choose_builder("python", None, "not installed", "/bin/trtexec", "fp16", False)[0] is None
    with pytest.raises(ValueError):
        tb.choose_builder("tensorflow", None, "", None, "fp16", False)


def test_int8_keeps_head_scores_and_box_decoding_in_float(repo):
    names = [n.name for n in onnx.load(str(_onnx(repo))).graph.node]
    keep = tb.layers_kept_in_float(names)
    head = max(int(n.split("/model.")[1].split("/")[0]) for n in names if n.startswith("/model."))
    assert keep, "the exported head has a Sigmoid and a DFL convolution"
    assert all(f"/model.{head}/" in n for n in keep)
    assert {v for n, v in keep.items() if n.endswith("Sigmoid")} == {"float32"}
    assert [n for n, v in keep.items() if v == "float16"] == [n for n in keep if "/dfl/" in n]


def _write_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [(40, 80), (80, 40), (64, 64), (30, 50), (50, 30)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        p = folder / f"img{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        paths.append(p)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_calibration_batches_are_letterboxed_like_the_served_preprocess(tmp_path):
    paths = _write_images(tmp_path / "calib")
    files = tb.calibration_images(tmp_path / "calib")
    assert files == sorted(paths)
    batches = list(tb.calibration_batches(files, 64, 2))
    assert len(batches) == 2  # 5 images, batches of 2: the incomplete last batch is left out
    for b in batches:
        assert b.shape == (2, 3, 64, 64) and b.dtype == np.float32
        assert 0.0 <= b.min() and b.max() <= 1.0
    first = batches[0][0]  # img0 is 40x80 (landscape): resized to 64x32, padded top and bottom
    assert np.allclose(first[:, :16, :], 114 / 255) and np.allclose(first[:, 48:, :], 114 / 255)
    assert not np.allclose(first[:, 16:48, :], 114 / 255)
    with pytest.raises(tb.BuildError, match="at least 8 images"):
        next(tb.calibration_batches(files, 64, 8))
    with pytest.raises(tb.BuildError, match="not a folder"):
        tb.calibration_images(tmp_path / "missing")
    assert len(tb.calibration_images(tmp_path / "calib", limit=2)) == 2


def test_calibration_cache_identity(tmp_path):
    files = _write_images(tmp_path / "calib")
    d = tb.calibration_digest("sha", files, 640, 8, "10.5.0")
    assert d == tb.calibration_digest("sha", files, 640, 8, "10.5.1")  # patch releases share calibration
    assert d != tb.calibration_digest("sha", files, 640, 8, "10.6.0")
    assert d != tb.calibration_digest("other", files, 640, 8, "10.5.0")
    assert d != tb.calibration_digest("sha", files[:-1], 640, 8, "10.5.0")
    assert d != tb.calibration_digest("sha", files, 320, 8, "10.5.0")


# --- generated configs against the spec and the ONNX model --------------------------------------


def test_tensorrt_plan_detector_config(repo, facts):
    cfg = _cfg(repo, TRT.detector)
    want = spec.detector_spec(TRT, facts.imgsz, facts.num_outputs, facts.num_anchors)
    graph = onnx.load(str(_onnx(repo))).graph
    assert cfg.platform == "tensorrt_plan" and cfg.backend == ""
    assert cfg.max_batch_size == spec.MAX_BATCH
    for got, declared, in_graph in ((cfg.input, want.inputs, graph.input), (cfg.output, want.outputs, graph.output)):
        assert [t.name for t in got] == [t.name for t in declared] == [t.name for t in in_graph]
        assert [list(t.dims) for t in got] == [list(t.dims) for t in declared]
        assert [repository.mc.DataType.Name(t.data_type) for t in got] == [t.config_dtype for t in declared]
    assert [g.kind for g in cfg.instance_group] == [repository.mc.ModelInstanceGroup.KIND_GPU]
    db = cfg.dynamic_batching
    assert db.max_queue_delay_microseconds > 0
    assert db.preferred_batch_size and all(1 <= b <= spec.MAX_BATCH for b in db.preferred_batch_size)
    [warm] = cfg.model_warmup
    assert warm.batch_size == 1 and set(warm.inputs) == {want.inputs[0].name}
    assert list(warm.inputs[want.inputs[0].name].dims) == list(want.inputs[0].dims)
    assert warm.inputs[want.inputs[0].name].zero_data
    # The fallback name is never written: a GPU without a plan of its own cannot load another's.
    assert cfg.default_model_filename == TRT.artefact
    assert not (repo / TRT.detector / "1" / TRT.artefact).exists()
    for cc, plan in cfg.cc_model_filenames.items():  # only where TensorRT built plans for this repo
        meta = json.loads((repo / TRT.detector / "1" / plan).with_suffix(".json").read_text())
        assert meta["compute_capability"] == cc and meta["imgsz"] == facts.imgsz
    if not _tensorrt_here():
        assert not cfg.cc_model_filenames


def test_onnxruntime_tensorrt_accelerator_config(repo, facts):
    cfg = _cfg(repo, ORT_TRT.detector)
    graph_inputs = {i.name for i in onnx.load(str(_onnx(repo))).graph.input}
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == spec.MAX_BATCH
    assert (repo / ORT_TRT.detector / "1" / cfg.default_model_filename).is_file()
    assert [g.kind for g in cfg.instance_group] == [repository.mc.ModelInstanceGroup.KIND_GPU]
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0 and cfg.model_warmup
    [acc] = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(acc.parameters)
    assert acc.name == "tensorrt"
    assert set(params) <= ORT_TRT_KEYS, f"keys the 24.10 backend rejects: {set(params) - ORT_TRT_KEYS}"
    assert params["precision_mode"] == "FP16"
    assert params["trt_engine_cache_enable"] == "1" and params["trt_engine_cache_path"].startswith("/")
    pixels = cfg.input[0]
    for key, batch in (("min", 1), ("opt", repository.TRT_OPT_BATCH), ("max", spec.MAX_BATCH)):
        name, dims = params[f"trt_profile_{key}_shapes"].split(":")
        assert name == pixels.name and name in graph_inputs
        assert [int(d) for d in dims.split("x")] == [batch, *pixels.dims]
    assert list(pixels.dims) == [3, facts.imgsz, facts.imgsz]


@pytest.mark.parametrize("variant", [TRT, ORT_TRT], ids=lambda v: v.key)
def test_ngc_variants_use_the_same_pre_and_post_models(repo, variant):
    steps = [s.model_name for s in _cfg(repo, variant.ensemble).ensemble_scheduling.step]
    cpu = [s.model_name for s in _cfg(repo, spec.variant("ort").ensemble).ensemble_scheduling.step]
    assert steps == [cpu[0], variant.detector, cpu[2]]


# --- plans on disk: the per-GPU map and the launcher's decision ---------------------------------


def _detector_copy(repo: Path, dest: Path) -> Path:
    """A repository holding only detector_trt (its config as build-engines renders it)."""
    (dest / TRT.detector / "1").mkdir(parents=True)
    shutil.copy(repo / TRT.detector / "config.pbtxt", dest / TRT.detector / "config.pbtxt")
    cfg = _cfg(dest, TRT.detector)
    cfg.cc_model_filenames.clear()
    (dest / TRT.detector / "config.pbtxt").write_text(repository.render(cfg))
    return dest


def _fake_plan(repo: Path, gpu: Gpu, trt: str, onnx_sha: str, built_at: str) -> str:
    """Plan bytes are opaque to the naming and mapping logic tested here; the sidecar is what counts."""
    stem = tb.plan_stem(gpu, trt)
    version_dir = repo / TRT.detector / "1"
    (version_dir / f"{stem}.plan").write_bytes(b"serialized engine")
    (version_dir / f"{stem}.json").write_text(json.dumps({
        "plan": f"{stem}.plan", "gpu": gpu.name, "compute_capability": gpu.cc, "tensorrt": trt,
        "precision": "fp16", "imgsz": 640, "batch": [1, 8, spec.MAX_BATCH], "input": spec.PIXELS.name,
        "onnx_sha256": onnx_sha, "calibration": None, "built_at": built_at,
    }))
    return f"{stem}.plan"


def test_plans_are_mapped_per_compute_capability(repo, tmp_path):
    r = _detector_copy(repo, tmp_path / "r")
    old_h200 = _fake_plan(r, H200, "10.3.0", "sha-now", "2024-06-01T00:00:00+00:00")
    h200 = _fake_plan(r, H200, "10.5.0", "sha-now", "2024-11-01T00:00:00+00:00")
    a10 = _fake_plan(r, A10, "10.5.0", "sha-now", "2024-10-01T00:00:00+00:00")
    _fake_plan(r, T4, "10.5.0", "sha-of-an-older-export", "2024-12-01T00:00:00+00:00")
    assert old_h200 != h200
    assert tb.apply_plans(r, "sha-now") == {"9.0": h200, "8.6": a10}  # newest per GPU, current ONNX only
    cfg = _cfg(r, TRT.detector)
    assert dict(cfg.cc_model_filenames) == {"9.0": h200, "8.6": a10}
    assert cfg.default_model_filename == TRT.artefact
    # Rendering again (every build-engines does) forgets plans; applying them restores the map.
    (r / TRT.detector / "config.pbtxt").write_text(repository.render(repository.detector_config(
        TRT, repository.read_facts(repo))))
    assert not _cfg(r, TRT.detector).cc_model_filenames
    tb.apply_plans(r, "sha-now")
    assert dict(_cfg(r, TRT.detector).cc_model_filenames) == {"9.0": h200, "8.6": a10}
    (r / TRT.detector / "1" / a10).unlink()  # a plan deleted by hand drops out of the map
    assert tb.apply_plans(r, "sha-now") == {"9.0": h200}


def test_launcher_serves_tensorrt_only_with_a_plan_for_every_visible_gpu(repo, tmp_path):
    r = _detector_copy(repo, tmp_path / "r")
    det = r / TRT.detector
    assert "no TensorRT plan built" in tb.plan_problem(det, [H200], "10.5.0")
    _fake_plan(r, H200, "10.5.0", "sha", "2024-11-01T00:00:00+00:00")
    tb.apply_plans(r, "sha")
    assert tb.plan_problem(det, [H200], "10.5.0") is None
    assert tb.plan_problem(det, [H200], None, probe=False) is None  # server TensorRT unknown: Triton decides
    assert tb.plan_problem(det, None, None, probe=False) is None  # GPUs unknown: Triton decides
    why = tb.plan_problem(det, [H200, T4], "10.5.0")
    assert "no TensorRT plan for Tesla T4 (compute capability 7.5)" in why and "NVIDIA H200 (9.0)" in why
    why = tb.plan_problem(det, [Gpu("0", "NVIDIA H100 80GB HBM3", "9.0")], "10.5.0")
    assert "built on NVIDIA H200, not NVIDIA H100 80GB HBM3" in why
    why = tb.plan_problem(det, [H200], "10.6.0")
    assert "built with TensorRT 10.5.0 but this server has TensorRT 10.6.0" in why


def test_launcher_skips_the_gpu_variants_here_and_says_why(repo):
    install = server.find_triton()
    plan = server.plan_models(repo, install.backends, server.gpu_available())
    if server.gpu_available() and {"tensorrt", "onnxruntime"} <= install.backends:
        pytest.skip("this machine serves the TensorRT variants")
    for v in (TRT, ORT_TRT):
        assert plan.skipped.get(v.ensemble), f"{v.ensemble} should be skipped with a reason here"
        assert v.detector not in plan.load
    # The NGC container on a GPU without a plan built: trt skipped with the reason, onnx_trt loads.
    if _cfg(repo, TRT.detector).cc_model_filenames:
        return
    ngc = server.plan_models(repo, {"python", "onnxruntime", "tensorrt"}, gpu=True)
    assert "no TensorRT plan built" in ngc.skipped[TRT.ensemble]
    assert ORT_TRT.detector in ngc.load and ngc.alias is not None and ngc.alias.key != TRT.key


# --- the skip path ------------------------------------------------------------------------------


def test_without_tensorrt_the_build_says_in_one_line_what_it_skipped(repo, facts, tmp_path):
    if _tensorrt_here():
        pytest.skip("TensorRT is present here: plans are built, not skipped")
    r = _detector_copy(repo, tmp_path / "r")
    msg = tb.build_for_repository(_onnx(repo), facts, r, "fp16", None)
    assert msg == ("TensorRT plans skipped: the tensorrt Python package is not installed and trtexec is not on "
                   "PATH; the trt variant will not be served, everything else is built")
    assert not list(r.rglob("*.plan"))
    assert "INT8 needs --calib-images" in tb.build_for_repository(_onnx(repo), facts, r, "int8", None)
    assert "precision must be one of" in tb.build_for_repository(_onnx(repo), facts, r, "fp8", None)
    assert "1 <= min <= opt <= max" in tb.build_for_repository(_onnx(repo), facts, r, "fp16", None,
                                                               opt_batch=spec.MAX_BATCH + 1)
    assert tb.build_for_repository(_onnx(repo), facts, r, "fp16", None, builder="trtexec") == (
        "TensorRT plans skipped: --trt-builder trtexec, but trtexec is not on PATH; the trt variant will not be "
        "served, everything else is built")


def test_build_engines_prints_the_tensorrt_line_even_when_up_to_date(repo, facts, weights, capsys):
    from yolo_triton.repository import build as build_engines

    assert build_engines.main(["--weights", str(weights), "--repo", str(repo), "--imgsz", str(facts.imgsz)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("build-engines: up to date") for line in lines)
    trt_lines = [line for line in lines if line.startswith("build-engines: TensorRT plan")]
    assert len(trt_lines) == 1
    if not _tensorrt_here():
        assert trt_lines[0].startswith("build-engines: TensorRT plans skipped: the tensorrt Python package")


# --- the build flow, with a stand-in for trtexec -------------------------------------------------

FAKE_TRTEXEC = """#!/bin/sh
# Stands in for trtexec where TensorRT is absent: prints what trtexec prints about itself and the
# device, and writes its own arguments where the engine would go.
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100500] [b18] # trtexec $*"
for a in "$@"; do
  case "$a" in --saveEngine=*) out="${a#--saveEngine=}";; --help) exit 0;; esac
done
echo "[I] Selected Device: ${FAKE_DEVICE:-NVIDIA H200}"
echo "[I] Compute Capability: 9.0"
[ "${FAKE_RC:-0}" = 0 ] || { echo "[E] Error[4]: engine build failed"; exit "$FAKE_RC"; }
printf '%s\\n' "$@" > "$out"
"""


@pytest.fixture()
def fake_trtexec(tmp_path, monkeypatch):
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(FAKE_TRTEXEC)
    exe.chmod(0o755)
    monkeypatch.setenv("TRTEXEC", str(exe))
    monkeypatch.setattr(trt_build, "build_device", lambda: [H200])  # no GPU here: the device the build targets
    return exe


def test_build_flow_names_maps_and_reuses_plans(repo, facts, tmp_path, fake_trtexec, monkeypatch):
    r = _detector_copy(repo, tmp_path / "r")
    det, size = r / TRT.detector, facts.imgsz
    msg = tb.build_for_repository(_onnx(repo), facts, r, "fp16", None, builder="trtexec", workspace_mib=1024)
    stem = "model.sm90.nvidia-h200.trt10.5.0"
    assert msg.startswith("TensorRT plan built with trtexec"), msg
    assert msg.endswith(f"-> {TRT.detector}/1/{stem}.plan ({(det / '1' / f'{stem}.plan').stat().st_size / 1e6:.1f} MB)")
    argv = (det / "1" / f"{stem}.plan").read_text().split("\n")
    assert f"--onnx={_onnx(repo)}" in argv and "--fp16" in argv and "--skipInference" in argv
    assert f"--minShapes=images:1x3x{size}x{size}" in argv
    assert f"--maxShapes=images:{spec.MAX_BATCH}x3x{size}x{size}" in argv
    assert f"--timingCacheFile={det / 'timing.sm90.nvidia-h200.trt10.5.0.cache'}" in argv
    assert "--memPoolSize=workspace:1024M" in argv
    assert [a for a in argv if a.startswith("--saveEngine=")] != [f"--saveEngine={det / '1' / f'{stem}.plan'}"], \
        "the engine is written aside and renamed, so a failed build never leaves half a plan"
    meta = json.loads((det / "1" / f"{stem}.json").read_text())
    assert meta["gpu"] == "NVIDIA H200" and meta["compute_capability"] == "9.0" and meta["tensorrt"] == "10.5.0"
    assert meta["onnx_sha256"] == tb.file_sha256(_onnx(repo)) and meta["builder"] == "trtexec"
    assert dict(_cfg(r, TRT.detector).cc_model_filenames) == {"9.0": f"{stem}.plan"}
    assert tb.plan_problem(det, [H200], "10.5.0") is None

    assert tb.build_for_repository(_onnx(repo), facts, r, "fp16", None, builder="trtexec").startswith(
        "TensorRT plan up to date")
    assert tb.build_for_repository(_onnx(repo), facts, r, "fp32", None, builder="trtexec").startswith(
        "TensorRT plan built")  # another precision: rebuilt in place
    assert "--fp16" not in (det / "1" / f"{stem}.plan").read_text().split("\n")

    before = (det / "1" / f"{stem}.plan").read_bytes()
    monkeypatch.setenv("FAKE_RC", "3")
    msg = tb.build_for_repository(_onnx(repo), facts, r, "fp16", None, builder="trtexec")
    assert msg.startswith("TensorRT plan build FAILED (trtexec") and "engine build failed" in msg
    assert (det / "1" / f"{stem}.plan").read_bytes() == before and not list(det.glob("1/.*tmp*"))
    monkeypatch.setenv("FAKE_RC", "0")
    monkeypatch.setenv("FAKE_DEVICE", "NVIDIA A10")
    msg = tb.build_for_repository(_onnx(repo), facts, r, "fp16", None, builder="trtexec", force=True)
    assert "FAILED" in msg and "CUDA_VISIBLE_DEVICES" in msg


def test_int8_through_trtexec_needs_a_calibration_cache(repo, facts, tmp_path, fake_trtexec):
    r = _detector_copy(repo, tmp_path / "r")
    images = tmp_path / "calib"
    _write_images(images)
    msg = tb.build_for_repository(_onnx(repo), facts, r, "int8", images, builder="trtexec", opt_batch=2)
    assert msg.startswith("TensorRT plans skipped: INT8 through trtexec needs a calibration cache"), msg
    digest = tb.calibration_digest(tb.file_sha256(_onnx(repo)), tb.calibration_images(images), facts.imgsz, 2,
                                   "10.5.0")
    cache = r / TRT.detector / f"calibration.{digest}.cache"
    cache.write_bytes(b"TRT-1005-MinMaxCalibration")  # as a Python-API calibration would have left it
    msg = tb.build_for_repository(_onnx(repo), facts, r, "int8", images, builder="trtexec", opt_batch=2)
    assert msg.startswith("TensorRT plan built with trtexec") and "INT8" in msg, msg
    [plan] = (r / TRT.detector / "1").glob("*.plan")
    assert plan.read_text().split("\n")[-4:-1] == ["--int8", "--fp16", f"--calib={cache}"]


# --- the real thing, where TensorRT is installed ------------------------------------------------


def _engine_io(trt, plan: Path):  # noqa: ANN001, ANN202
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None, f"{plan} does not deserialize"
    return engine, [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]


def _run_engine(engine, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
    import torch

    ctx = engine.create_execution_context()
    ctx.set_input_shape(spec.PIXELS.name, x.shape)
    inp = torch.from_numpy(x).cuda()
    out = torch.empty(tuple(ctx.get_tensor_shape(spec.RAW.name)), dtype=torch.float32, device="cuda")
    ctx.set_tensor_address(spec.PIXELS.name, inp.data_ptr())
    ctx.set_tensor_address(spec.RAW.name, out.data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out.cpu().numpy()


def _sample_batch(imgsz: int, n: int, tmp_path: Path) -> np.ndarray:
    folder = tmp_path / "imgs"
    _write_images(folder)
    return next(tb.calibration_batches(tb.calibration_images(folder), imgsz, n))


@pytest.mark.tensorrt
def test_real_plan_builds_and_matches_onnxruntime(repo, facts, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here (NVIDIA's index or container only)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT imports but no CUDA GPU is visible")
    import onnxruntime

    r = tmp_path / "repo"
    repository.write(r, facts)
    msg = tb.build_for_repository(_onnx(repo), facts, r, "fp32", None, opt_batch=4, builder="python")
    assert msg.startswith("TensorRT plan built with python"), msg
    det = r / TRT.detector
    cc = "{}.{}".format(*torch.cuda.get_device_capability(0))
    mapping = dict(_cfg(r, TRT.detector).cc_model_filenames)
    assert set(mapping) == {cc}
    plan = det / "1" / mapping[cc]
    meta = json.loads(plan.with_suffix(".json").read_text())
    assert meta["gpu"] == torch.cuda.get_device_name(0) and meta["tensorrt"] == tb.short_version(trt.__version__)
    assert meta["batch"] == [1, 4, spec.MAX_BATCH] and list(det.glob("timing.*.cache"))
    assert tb.build_for_repository(_onnx(repo), facts, r, "fp32", None, opt_batch=4).startswith(
        "TensorRT plan up to date")
    gpu = Gpu("0", meta["gpu"], cc)
    assert tb.plan_problem(det, [gpu], meta["tensorrt"]) is None

    engine, names = _engine_io(trt, plan)
    assert names == [spec.PIXELS.name, spec.RAW.name]
    lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(spec.PIXELS.name, 0))
    assert (lo, opt, hi) == tuple(tb.profile_shapes(facts.imgsz, 4).values())
    x = _sample_batch(facts.imgsz, 2, tmp_path)
    got = _run_engine(engine, x)
    want = onnxruntime.InferenceSession(str(_onnx(repo)), providers=["CPUExecutionProvider"]).run(
        None, {spec.PIXELS.name: x})[0]
    assert got.shape == want.shape == (2, facts.num_outputs, facts.num_anchors)
    np.testing.assert_allclose(got[:, :4], want[:, :4], atol=0.5)  # box pixels (TF32 allowed in FP32 builds)
    np.testing.assert_allclose(got[:, 4:], want[:, 4:], atol=1e-2)  # class scores


@pytest.mark.tensorrt
def test_real_trtexec_plan_builds(repo, facts, tmp_path):
    if tb.find_trtexec() is None:
        pytest.skip("trtexec is not installed here (NVIDIA's containers ship it)")
    r = tmp_path / "repo"
    repository.write(r, facts)
    msg = tb.build_for_repository(_onnx(repo), facts, r, "fp16", None, builder="trtexec")
    assert msg.startswith("TensorRT plan built with trtexec"), msg
    [plan] = (r / TRT.detector / "1").glob("model.sm*.plan")
    assert list(_cfg(r, TRT.detector).cc_model_filenames.values()) == [plan.name]
    try:
        import tensorrt as trt
    except ImportError:
        return
    assert _engine_io(trt, plan)[1] == [spec.PIXELS.name, spec.RAW.name]
