"""The architecture holds: a self-contained model repository, one console command, per-stage
metrics from every python model, and a package of small modules."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, sample_images

from yolo_triton import spec
from yolo_triton.backend import metrics as stage_metrics
from yolo_triton.client.detector import DetectorClient
from yolo_triton.serve import launcher
from yolo_triton.serve.launcher import Server


def scrape(server: Server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.ports.metrics}/metrics", timeout=30) as r:
        return r.read().decode()


def values(text: str, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """metric -> {sorted label pairs: value} from Prometheus text."""
    out = {}
    for m in re.finditer(rf"^{metric}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, re.M):
        labels = tuple(sorted(tuple(kv.split("=", 1)) for kv in m.group(1).split(",")))
        out[tuple((k, v.strip('"')) for k, v in labels)] = float(m.group(2))
    return out


def stage_times(server: Server, model: str) -> dict[str, float]:
    got = values(scrape(server), spec.STAGE_DURATION_METRIC)
    return {dict(k)["stage"]: v for k, v in got.items() if dict(k)["model"] == model}


def counts(server: Server, metric: str, model: str) -> float:
    return values(scrape(server), metric).get((("model", model),), 0.0)


def send_for(url: str, model: str, seconds: float) -> int:
    """Requests for at least `seconds` (metrics are flushed at most once a second)."""
    image = next(iter(sample_images().values()))
    n, deadline = 0, time.monotonic() + seconds
    with DetectorClient(url, model=model, timeout_s=60) as c:
        while time.monotonic() < deadline or n < 2:
            c.detect(image)
            n += 1
    return n


def test_every_python_model_publishes_its_stage_times_and_they_grow(server):
    """yolov8n is the fused pipeline on this server: its three stages come from inside the model.
    The staged ensemble's python steps report theirs the same way."""
    fused = spec.variant("ort_int8_fused")  # the demo checkpoint's INT8 gate passed (test_int8.py)
    staged = spec.variant("ort")
    assert server.plan.alias == fused
    send_for(server.url, spec.ALIAS, stage_metrics.FLUSH_S * 1.5)
    send_for(server.url, staged.ensemble, stage_metrics.FLUSH_S * 1.5)
    before = stage_times(server, fused.pipeline)
    assert set(spec.STAGES) <= set(before), before
    assert all(before[s] > 0 for s in spec.STAGES), before
    # Totals so far include other tests' refused requests (executions of no image), so the
    # images-per-execution check is made on what this test sends next.
    executions = counts(server, spec.STAGE_EXECUTIONS_METRIC, fused.pipeline)
    images = counts(server, spec.STAGE_IMAGES_METRIC, fused.pipeline)
    assert executions >= 2 and images >= 2
    for model, stage in staged.stages.items():
        assert stage_times(server, model).get(stage, 0) > 0, (model, stage)
    sent = send_for(server.url, spec.ALIAS, stage_metrics.FLUSH_S * 2.5)
    after = stage_times(server, fused.pipeline)
    assert all(after[s] > before[s] for s in spec.STAGES), (before, after)
    more_executions = counts(server, spec.STAGE_EXECUTIONS_METRIC, fused.pipeline) - executions
    more_images = counts(server, spec.STAGE_IMAGES_METRIC, fused.pipeline) - images
    assert sent > 0 and more_executions > 0 and more_images >= more_executions, (sent, more_executions, more_images)
    network_share = (after["network"] - before["network"]) / sum(after[s] - before[s] for s in spec.STAGES)
    assert 0.2 < network_share < 1.0, network_share  # the network is most of a CPU request
    # What reporting costs is reported too: a few flushes a second, each a handful of updates.
    report = after.get(stage_metrics.REPORT, 0.0)
    total = sum(after[s] for s in spec.STAGES)
    print(f"stage us {after}; reporting {report:.0f} us = {100 * report / total:.3f}% of the stages' time")
    assert report < 0.02 * total


def test_a_copy_of_the_built_repository_serves_from_another_folder(repo, tmp_path):
    """No model imports the source tree by path: the repository alone, copied elsewhere, served by a
    tritonserver started from another working directory, answers as the original."""
    copy = tmp_path / "elsewhere" / "models"
    shutil.copytree(repo, copy, symlinks=False, ignore=shutil.ignore_patterns("yolov8n"))
    for model_py in copy.glob("*/1/model.py"):
        assert "sys.path" not in model_py.read_text() and not model_py.is_symlink()
    image = next(iter(sample_images().values()))
    with Server(repo, only=["ort_fused"]) as a, DetectorClient(a.url, timeout_s=60) as c:
        want = c.detect(image).detections
    here = Path.cwd()
    try:
        import os

        os.chdir(tmp_path)
        with Server(copy, only=["ort_fused"], log=tmp_path / "ts.log") as b, DetectorClient(b.url, timeout_s=60) as c:
            got = c.detect(image).detections
    finally:
        os.chdir(here)
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
    assert len(got.scores) > 0


def test_every_python_model_has_answered_once_before_the_server_is_ready(repo):
    """Triton's warm-up request (`model_warmup`) runs each python model's first execute() at load,
    on every instance, so no client request is the first: before any client, each has answered one
    request per instance, and a client's request comes after them. On a GPU machine the GPU
    variants' models are checked too."""
    keys = ["ort", "ort_fused", *(["gpu", "gpu_fused"] if launcher.gpu_available() else [])]
    variants = [spec.variant(k) for k in keys]
    python = [m for v in variants for m in ((v.pipeline,) if v.fused else (v.preprocess, v.detector, v.postprocess))]
    fused = spec.variant("ort_fused")
    with Server(repo, only=keys) as s, DetectorClient(s.url, model=fused.ensemble, timeout_s=60) as c:
        def answered(model: str) -> tuple[int, int]:
            st = c.model_stats(model)["model_stats"][0]
            return int(st.get("execution_count", 0)), int(st["inference_stats"]["success"].get("count", 0))

        def instances(model: str) -> int:
            groups = c.client.get_model_config(model, as_json=True)["config"]["instance_group"]
            return sum(int(g.get("count", 1)) for g in groups)

        assert {m: answered(m) for m in python} == {m: (instances(m),) * 2 for m in python}
        assert answered(fused.ensemble) == (0, 0), "the warm-up runs inside the server, not through an ensemble"
        assert len(c.detect(next(iter(sample_images().values()))).detections.scores) > 0
        assert answered(fused.pipeline) == (2, 2)


def test_the_console_command_lists_its_subcommands():
    exe = Path(sys.executable).with_name("yolo-triton")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("detect", "serve", "build", "perf", "bench-cpu", "bench-gpu", "eval", "demo", "locust", "report"):
        assert re.search(rf"^  {re.escape(name)}\s", out.stdout, re.M), name
    bad = subprocess.run([str(exe), "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "yolo_triton").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 420, f"{path.relative_to(ROOT)} has {lines} lines: split it by concern"


def test_nothing_inserts_the_source_tree_into_sys_path():
    offenders = [p for p in (ROOT / "yolo_triton").rglob("*.py") if "sys.path.insert" in p.read_text()]
    assert not offenders, offenders


def test_requests_refuse_one_by_one_and_answer_the_rest_in_order():
    """The gather/scatter every python model uses (backend.requests), on stand-ins for the stub's
    classes: a refusal in either pass or in the batched step's results answers that request only."""
    from types import SimpleNamespace

    from yolo_triton.backend.requests import Requests
    from yolo_triton.pipeline.validation import InputError

    class Response:
        def __init__(self, tensors=None, error=None):
            self.tensors, self.error = tensors, error

    class Error:
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            self.message, self.code = message, code

    pb = SimpleNamespace(InferenceResponse=Response, TritonError=Error, Tensor=lambda name, a: (name, a))
    io = SimpleNamespace(tensor=lambda _pb, name, a: (name, a))
    requests = [{"n": n} for n in (1, -1, 2, 3, 4)]

    def first(r):
        if r["n"] < 0:
            raise InputError("negative")
        return r["n"]

    def second(_r, n):
        if n == 3:
            raise InputError("three")
        return n * 10

    batch = Requests(pb, requests, io)
    assert batch.each(first) == [1, 2, 3, 4] and batch.live == [0, 2, 3, 4]
    kept, values = batch.then([1, 2, 3, 4], second)
    assert kept == [0, 1, 3] and values == [10, 20, 40] and batch.live == [0, 2, 4]
    responses = batch.answer([(np.array([v]),) for v in values[:2]] + [InputError("budget")], [spec.NUM_DETECTIONS])
    assert [r.error.message if r.error else int(r.tensors[0][1][0]) for r in responses] == \
        [10, "negative", 20, "three", "budget"]
    assert all(r.error.code == Error.INVALID_ARG for r in responses if r.error)


def test_the_stub_profiles_its_execute_calls_when_the_environment_asks(repo, tmp_path, monkeypatch):
    """With YOLO_TRITON_PROFILE_DIR set, each python model writes cProfile stats of its execute()
    calls when it unloads: the served Python's own calls, counted (one execute per request here)."""
    import pstats

    from yolo_triton.backend.profiling import PROFILE_ENV

    folder = tmp_path / "profile"
    monkeypatch.setenv(PROFILE_ENV, str(folder))
    image = next(iter(sample_images().values()))
    with Server(repo, only=["ort_fused"], log=tmp_path / "ts.log") as s, DetectorClient(s.url, timeout_s=60) as c:
        for _ in range(3):
            assert len(c.detect(image).detections.scores) > 0
    model = spec.variant("ort_fused").pipeline
    files = list(folder.glob(f"{model}-*.pstats"))
    assert len(files) == 1, sorted(p.name for p in folder.iterdir()) if folder.exists() else "no folder"
    stats = pstats.Stats(str(files[0])).stats  # (file, line, function) -> (calls, ..., cumulative, ...)
    executes = [v for (path, _, fn), v in stats.items() if fn == "execute" and path.endswith("roles.py")]
    assert executes and sum(v[1] for v in executes) >= 3
    assert max(v[3] for v in executes) > 0.0


def test_without_the_variable_nothing_is_profiled(tmp_path, monkeypatch):
    from yolo_triton.backend.profiling import PROFILE_ENV, ExecuteProfile

    monkeypatch.delenv(PROFILE_ENV, raising=False)
    profile = ExecuteProfile("m")
    with profile:
        pass
    profile.dump()
    assert profile.profiler is None and profile.path is None
