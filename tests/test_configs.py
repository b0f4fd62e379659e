"""Every generated config parses, and names tensors the models really have."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from yolo_triton import spec
from yolo_triton.pipeline import geometry
from yolo_triton.repository import configs as repository


def _configs(repo: Path) -> dict[str, object]:
    return {p.parent.name: repository.parse(p.read_text()) for p in sorted(repo.glob("*/config.pbtxt"))}


def test_every_model_directory_has_a_parsable_config(repo):
    configs = _configs(repo)
    expected = {"preprocess", "postprocess", "preprocess_gpu", "postprocess_gpu"}
    expected |= {m for v in spec.VARIANTS for m in v.models}
    assert expected <= set(configs)
    for name, cfg in configs.items():
        assert cfg.name == name
        assert cfg.max_batch_size == spec.MAX_BATCH


def test_python_models_declare_the_spec_tensors(repo):
    configs = _configs(repo)
    for model in (spec.PREPROCESS, spec.POSTPROCESS):
        cfg = configs[model.name]
        assert [i.name for i in cfg.input] == [t.name for t in model.inputs]
        assert [o.name for o in cfg.output] == [t.name for t in model.outputs]
        assert [list(i.dims) for i in cfg.input] == [list(t.dims) for t in model.inputs]
        assert [i.optional for i in cfg.input] == [t.optional for t in model.inputs]


def test_detector_configs_match_the_onnx_model(repo, facts):
    model = onnx.load(str(repo / "detector_ort" / "1" / "model.onnx"))
    graph_in = {i.name: i for i in model.graph.input}
    graph_out = {o.name: o for o in model.graph.output}
    for v in spec.VARIANTS:
        cfg = _configs(repo)[v.detector]
        for tensors, graph in ((cfg.input, graph_in), (cfg.output, graph_out)):
            for t in tensors:
                assert t.name in graph, f"{v.detector}: {t.name} is not a tensor of the ONNX model"
                dims = graph[t.name].type.tensor_type.shape.dim
                assert dims[0].dim_param, "batch axis must be dynamic"
                for d, want in zip(dims[1:], t.dims):
                    assert not d.dim_value or d.dim_value == want, f"{t.name}: model {d} vs config {want}"
    cfg = _configs(repo)["detector_ort"]
    assert list(cfg.input[0].dims) == [3, facts.imgsz, facts.imgsz]
    assert list(cfg.output[0].dims) == [4 + len(facts.names), facts.num_anchors]


def _assert_closed(ens, configs: dict) -> None:
    assert ens.platform == "ensemble"
    produced = {i.name for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        target = configs[step.model_name]
        assert set(step.input_map) <= {i.name for i in target.input}, step.model_name
        assert set(step.output_map) <= {o.name for o in target.output}, step.model_name
        required = {i.name for i in target.input if not i.optional}
        assert required <= set(step.input_map), f"{step.model_name} misses {required - set(step.input_map)}"
        assert set(step.input_map.values()) <= produced, f"{step.model_name} reads a tensor nothing produced"
        produced |= set(step.output_map.values())
    assert {o.name for o in ens.output} <= produced


@pytest.mark.parametrize("variant", [v for v in spec.VARIANTS if not v.fused], ids=lambda v: v.key)
def test_ensemble_wiring_is_closed(repo, variant):
    configs = _configs(repo)
    _assert_closed(configs[variant.ensemble], configs)


@pytest.mark.parametrize("variant", [v for v in spec.VARIANTS if v.fused], ids=lambda v: v.key)
def test_fused_pipeline_has_the_ensemble_interface(repo, facts, variant):
    configs = _configs(repo)
    _assert_closed(configs[variant.ensemble], configs)
    assert [s.model_name for s in configs[variant.ensemble].ensemble_scheduling.step] == [variant.pipeline]
    fused = configs[variant.pipeline]
    assert fused.backend == "python" and not fused.platform
    for got, want in ((fused.input, spec.ENSEMBLE_INPUTS), (fused.output, spec.ENSEMBLE_OUTPUTS)):
        assert [t.name for t in got] == [t.name for t in want]
        assert [list(t.dims) for t in got] == [list(t.dims) for t in want]
    assert [i.optional for i in fused.input] == [t.optional for t in spec.ENSEMBLE_INPUTS]
    artefact = fused.parameters["artefact_model"].string_value, fused.parameters["artefact"].string_value
    assert artefact == (variant.detector, variant.artefact)
    assert int(fused.parameters["imgsz"].string_value) == facts.imgsz
    assert fused.parameters["role"].string_value == "pipeline"
    assert fused.parameters["device"].string_value == variant.device


def test_every_python_model_is_the_one_generated_shim(repo):
    """No model folder holds code of its own: a two-line model.py that imports the installed package,
    and no path into the source tree (the repository can be copied anywhere)."""
    configs = _configs(repo)
    python = [name for name, cfg in configs.items() if cfg.backend == "python"]
    steps = {"preprocess", "postprocess", "preprocess_gpu", "postprocess_gpu"}
    in_python = {m for v in spec.VARIANTS if v.runtime.in_python for m in (v.detector, v.pipeline) if m}
    assert set(python) == steps | in_python
    for name in python:
        text = (repo / name / "1" / "model.py").read_text()
        code = [ast.unparse(node) for node in ast.parse(text).body[1:]]  # after the docstring
        assert code == ["from yolo_triton.backend.model import TritonPythonModel"], (name, code)
        assert "sys.path" not in text and not (repo / name / "1" / "model.py").is_symlink()
        role = configs[name].parameters["role"].string_value
        assert role in ("preprocess", "network", "postprocess", "pipeline"), (name, role)


def test_variants_lie_on_their_axes():
    """device x runtime x topology: every runtime staged, the python runtimes fused too, and the
    alias picks by FASTEST_FIRST, which names every variant once."""
    keys = [v.key for v in spec.VARIANTS]
    assert sorted(spec.FASTEST_FIRST) == sorted(keys) and len(set(keys)) == len(keys)
    for v in spec.VARIANTS:
        assert v.topology in ("staged", "fused") and v.device in ("cpu", "gpu")
        assert v.fused == (v.topology == "fused") and (not v.fused or v.runtime.in_python)
        assert ("gpu" in v.needs) == (v.device == "gpu")


def test_configs_carry_the_checkpoint_facts(repo, facts):
    import json

    cfg = _configs(repo)[spec.variant("ort").ensemble]
    assert json.loads(cfg.parameters["names"].string_value) == list(facts.names)
    assert int(cfg.parameters["imgsz"].string_value) == facts.imgsz


def test_rendering_is_deterministic(facts):
    a = {k: repository.render(c) for k, c in repository.all_configs(facts).items()}
    b = {k: repository.render(c) for k, c in repository.all_configs(facts).items()}
    assert a == b


def test_python_models_find_the_artefact_their_config_names(repo, facts):
    """What each python model's initialize() reads back from Triton's args (yolo_triton.backend.args):
    the detector's file in its own folder, and the same file for the fused pipeline that shares it."""
    from google.protobuf import json_format

    from yolo_triton.backend.args import ModelArgs

    def args(name: str) -> ModelArgs:
        cfg = json_format.MessageToDict(_configs(repo)[name], preserving_proto_field_name=True)
        raw = {"model_config": json.dumps(cfg), "model_repository": str(repo / name), "model_version": "1"}
        return ModelArgs.parse(raw)

    for v in (spec.variant("ort"), spec.variant("ort_fused"), spec.variant("gpu"), spec.variant("gpu_fused")):
        margs = args(v.pipeline or v.detector)
        assert margs.existing_artefact() == repo / v.detector / "1" / v.artefact
        assert margs.max_batch == spec.MAX_BATCH
        if v.key != "ort":  # detector_ort reads its size from the input dims
            assert margs.imgsz == facts.imgsz
    assert args(spec.variant("gpu").detector).enabled("torch_compile")
    with pytest.raises(FileNotFoundError, match="missing: run `make build-engines`"):
        ModelArgs(args("pipeline_ort").config, {"artefact": "absent.onnx"}, repo / "x" / "1").existing_artefact()


def test_every_model_but_the_ensembles_is_warmed_up_with_a_valid_request(repo, facts):
    """One request of one image at load, at concrete dims the model accepts: the warm-up frame
    where it takes images, zeros for the network's tensors, and the frame's own LETTERBOX row
    from the file beside the config (zeros are no letterbox)."""
    frame_row = geometry.plan(spec.WARMUP_FRAME[0], spec.WARMUP_FRAME[1], facts.imgsz).as_array()
    for name, cfg in _configs(repo).items():
        if cfg.platform == "ensemble":
            assert not cfg.model_warmup, name
            continue
        [warm] = cfg.model_warmup
        assert warm.batch_size == 1, name
        inputs = {i.name: i for i in cfg.input}
        required = {n for n, i in inputs.items() if not i.optional}
        assert required <= set(warm.inputs) <= set(inputs), name
        for key, w in warm.inputs.items():
            assert w.data_type == inputs[key].data_type and all(d > 0 for d in w.dims), (name, key)
            assert all(c in (-1, d) for c, d in zip(inputs[key].dims, w.dims, strict=True)), (name, key)
            if key == spec.IMAGE.name:
                assert tuple(w.dims) == spec.WARMUP_FRAME and w.zero_data
            elif key == spec.LETTERBOX.name:
                data = np.fromfile(repo / name / repository.WARMUP_DIR / w.input_data_file, np.float32)
                np.testing.assert_array_equal(data, np.asarray(frame_row, np.float32))
            else:
                assert w.zero_data, (name, key)
        takes_images = spec.IMAGE.name in inputs
        assert takes_images == (spec.IMAGE.name in warm.inputs), f"{name}: a model that takes images is warmed with one"
