"""The measurement tools (yolo_triton.perf) run for real, in their quick mode, against the
session's tritonserver: perf_analyzer sweeps, a Locust load test, the YOLOv8n/YOLOv5n comparison
and the report. Assertions are on the files they write (columns, non-zero figures, composing
models, valid PNGs), never on how fast anything was. The stage-metrics reader and the fused
stage rows are checked against literal samples."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yolo_triton import spec
from yolo_triton.perf import inputs, metrics, perf_analyzer, stages, stats
from yolo_triton.perf.runs import latest_run, read_meta
from yolo_triton.perf.tables import read_csv
from yolo_triton.perf.target import loaded_variants

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "perf" / "locustfile.py"
STAGE_MODELS = {"preprocess": "preprocess", "network": "detector_ort", "postprocess": "postprocess"}


def run_tool(module: str, *args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", f"yolo_triton.perf.{module}", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    if ok:
        assert out.returncode == 0, f"{module} exit {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def target_args(server) -> list[str]:
    """The session's server, and its own metrics port (8002 may be another server's)."""
    return ["--url", server.url, "--metrics-url", f"127.0.0.1:{server.ports.metrics}"]


def publishes_stage_metrics(server, model: str) -> bool:
    """Whether `model` has published stage times on the server's metrics port (the fused models
    do once their code reports them; until then the tools show one figure for them)."""
    return model in metrics.snapshot(metrics.fetch(metrics.for_grpc(server.url, server.ports.metrics)))


def assert_fused_stages(here: dict[str, dict], pipeline: str, split: bool) -> None:
    """A fused model's stage rows: the three stages and the rest from its metrics, else one row."""
    want = [*spec.STAGES, stages.GLUE] if split else [stages.WHOLE]
    assert sorted(here) == sorted(want), (sorted(here), split)
    assert all(r["composing_model" if "composing_model" in r else "model"] == pipeline for r in here.values())
    if split:
        assert all(here[s]["compute_infer_ms"] > 0 for s in spec.STAGES), here


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def variant(server) -> str:
    """The ensemble a CPU-only server runs (the ort variant) — the one the checks below name."""
    assert spec.variant("ort").ensemble in loaded_variants(server.url)
    return spec.variant("ort").ensemble


@pytest.fixture(scope="module")
def perf_run(server, runs: Path) -> tuple[Path, str]:
    out = run_tool("sweep", *target_args(server), "--quick", "--runs-dir", str(runs))
    run = latest_run("perf", runs)
    assert run is not None, out.stdout
    return run, out.stdout


@pytest.fixture(scope="module")
def locust_run(server, runs: Path) -> tuple[Path, str]:
    out = run_tool("locust", *target_args(server), "--quick", "--runs-dir", str(runs))
    run = latest_run("locust", runs)
    assert run is not None, out.stdout
    return run, out.stdout


@pytest.fixture(scope="module")
def compare_run(server, repo: Path, runs: Path) -> tuple[Path, str]:
    out = run_tool("compare", *target_args(server), "--repo", str(repo), "--quick", "--no-download",
                   "--runs-dir", str(runs))
    run = latest_run("compare", runs)
    assert run is not None, out.stdout
    return run, out.stdout


# --- perf_analyzer ------------------------------------------------------------------------------


def test_perf_analyzer_binary_runs_here():
    assert "2.51" in perf_analyzer.version()


def test_perf_sweep_latency_csv(perf_run, variant):
    run, stdout = perf_run
    assert set(header(run / "latency.csv")) >= {"model", "mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms",
                                                 "p99_ms", "avg_ms", "stable"}
    rows = read_csv(run / "latency.csv")
    mine = [r for r in rows if r["model"] == variant]
    assert sorted(r["load"] for r in mine if r["mode"] == "concurrency") == [1.0, 2.0]
    assert [r for r in mine if r["mode"] == "request_rate"], "the request-rate sweep is missing"
    for r in mine:
        assert r["throughput"] > 0 and r["avg_ms"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert f"{variant} concurrency 1:" in stdout  # progress line per level


def test_perf_sweep_composing_models(perf_run, variant):
    run, _ = perf_run
    assert set(header(run / "stages.csv")) >= {"model", "mode", "load", "stage", "composing_model", "queue_ms",
                                               "compute_input_ms", "compute_infer_ms", "compute_output_ms", "total_ms"}
    stages = read_csv(run / "stages.csv")
    levels = {(r["mode"], r["load"]) for r in read_csv(run / "latency.csv") if r["model"] == variant}
    for mode, load in levels:
        here = {s["stage"]: s for s in stages if s["model"] == variant and s["mode"] == mode and s["load"] == load}
        assert {k: s["composing_model"] for k, s in here.items()} == STAGE_MODELS, (mode, load)
        for s in here.values():
            assert s["compute_infer_ms"] > 0
            parts = s["queue_ms"] + s["compute_input_ms"] + s["compute_infer_ms"] + s["compute_output_ms"]
            assert s["total_ms"] == pytest.approx(parts, abs=0.01)
            assert s["source"] == "perf_analyzer"
    summary = (run / "summary.md").read_text()
    assert f"## {variant}" in summary and "### Where the time goes" in summary


def test_perf_sweep_fused_stages(perf_run, server):
    """A fused variant's stages come from its stage metrics when it publishes them (its queue and
    input handling with preprocess, its output handling with postprocess, the rest of its compute
    apart); a fused model that publishes none is one row."""
    fused = spec.variant("ort_fused")
    run, _ = perf_run
    stage_rows = [s for s in read_csv(run / "stages.csv") if s["model"] == fused.ensemble]
    levels = {(r["mode"], r["load"]) for r in read_csv(run / "latency.csv") if r["model"] == fused.ensemble}
    assert levels, f"{fused.ensemble} was not measured"
    split = publishes_stage_metrics(server, fused.pipeline)
    for mode, load in levels:
        assert_fused_stages({s["stage"]: s for s in stage_rows if (s["mode"], s["load"]) == (mode, load)},
                            fused.pipeline, split)


def test_perf_sweep_sends_real_photos(perf_run):
    """The input data is the photos themselves, each with its own shape: decoding the JSON gives
    back the pixels of the files named in the run's record."""
    run, _ = perf_run
    meta = read_meta(run)
    data = json.loads((run / "input_data.json").read_text())["data"]
    assert len(data) == len(meta["images"]) >= 3
    photos = {s.name: s.image for s in inputs.sample_images()}
    shapes = set()
    for entry, (name, _) in zip(data, meta["images"]):
        t = entry[spec.IMAGE.name]
        pixels = np.frombuffer(base64.b64decode(t["b64"]), np.uint8).reshape(t["shape"])
        np.testing.assert_array_equal(pixels, photos[name])
        shapes.add(tuple(t["shape"]))
    assert len(shapes) == len(data)
    assert all(" -i grpc " in c and "--input-data" in c for c in meta["perf_analyzer_commands"])


# --- Locust -------------------------------------------------------------------------------------


def test_locust_reports(locust_run):
    run, stdout = locust_run
    cols = header(run / "locust_stats.csv")
    assert {"Type", "Name", "Request Count", "Failure Count", "Average Response Time", "50%", "95%", "99%"} <= set(cols)
    agg = next(r for r in read_csv(run / "locust_stats.csv") if r["Name"] == "Aggregated")
    assert agg["Request Count"] > 0 and agg["Failure Count"] == 0
    assert agg["Average Response Time"] > 0 and agg["Requests/s"] > 0
    assert "<html" in (run / "locust.html").read_text()[:2000].lower()
    meta = read_meta(run)
    assert meta["requests"] == int(agg["Request Count"]) and meta["failures"] == 0


def test_locust_stage_shares(locust_run, server):
    """The rows decompose the client's mean latency, stage by stage, whichever variant `yolov8n` is."""
    run, _ = locust_run
    rows = {r["stage"]: r for r in read_csv(run / "stages.csv")}
    v = spec.variant(read_meta(run)["variant"].removeprefix(f"{spec.ALIAS}_"))
    if v.fused:
        server_side = {k: r for k, r in rows.items() if k in stages.ORDER}
        assert_fused_stages(server_side, v.pipeline, publishes_stage_metrics(server, v.pipeline))
    else:
        for stage, model in STAGE_MODELS.items():
            assert rows[stage]["model"] == model
            assert rows[stage]["requests"] > 0 and rows[stage]["compute_infer_ms"] > 0
    parts = [r["share_of_client_pct"] for k, r in rows.items() if k != "client mean latency"]
    assert sum(parts) == pytest.approx(100.0, abs=1.0)  # the rows decompose the client's mean latency
    assert "## Where the time goes under this load" in (run / "summary.md").read_text()


def test_locust_counts_failures(server, tmp_path):
    """Requests the server rejects are Locust failures (here: an ensemble that does not exist)."""
    prefix = tmp_path / "bad"
    out = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-r", "1",
         "-t", "3s", "--csv", str(prefix), "--triton-url", server.url, "--triton-model", "no_such_model",
         "--think-time", "0.2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]  # Locust's exit code on failures
    agg = next(r for r in read_csv(Path(f"{prefix}_stats.csv")) if r["Name"] == "Aggregated")
    assert agg["Request Count"] > 0 and agg["Failure Count"] == agg["Request Count"]
    failures = read_csv(Path(f"{prefix}_failures.csv"))
    assert failures and "no_such_model" in str(failures[0]["Error"])


# --- comparison ---------------------------------------------------------------------------------


def test_compare_tables(compare_run, variant):
    run, stdout = compare_run
    assert set(header(run / "compare.csv")) >= {"name", "kind", "params_m", "gflops", "preprocess_ms",
                                                "inference_ms", "postprocess_ms", "end_to_end_ms"}
    rows = {r["name"]: r for r in read_csv(run / "compare.csv")}
    assert {"YOLOv8n", "YOLOv5n", variant} <= set(rows)
    for r in rows.values():
        for k in ("preprocess_ms", "inference_ms", "postprocess_ms", "end_to_end_ms"):
            assert r[k] > 0, (r["name"], k)
    v8, v5 = rows["YOLOv8n"], rows["YOLOv5n"]
    # architecture facts (Ultralytics' published 3.2M/8.7G and 2.6M/7.7G at 640; FLOPs scale with the
    # input area, and the comparison runs at the served size), not timings
    assert 3.0 < v8["params_m"] < 3.3 and 2.5 < v5["params_m"] < 2.8
    area = (v8["imgsz"] / 640) ** 2
    assert v8["gflops"] == pytest.approx(8.7 * area, rel=0.1) and v5["gflops"] == pytest.approx(7.7 * area, rel=0.1)
    for r in (v8, v5):
        assert str(r["weights"]).startswith("pretrained") or "seeded random weights" in str(r["weights"])
    assert rows[variant]["kind"] == "served" and rows[variant]["requests"] == 6  # 3 photos x 2 repeats
    text = (run / "compare.md").read_text()
    assert "| name | kind | params_m | gflops | preprocess_ms | inference_ms | postprocess_ms |" in text
    assert "Weights:" in text and "results[0].speed" in text
    assert json.loads((run / "compare.json").read_text())["rows"]


# --- report -------------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report(perf_run, locust_run, compare_run, runs: Path):
    out = run_tool("report", "--runs-dir", str(runs))
    report = runs / "report" / "report.md"
    text = report.read_text()
    for section in ("## At a glance", "## 1. perf_analyzer sweeps", "## 2. Locust load test",
                    "## 3. YOLOv8n vs YOLOv5n", "## Machine, versions and command lines"):
        assert section in text, section
    assert "No finished" not in text
    assert "tritonserver" in text and "perf_analyzer -m" in text and "-m locust" in text
    for name in ("stages_per_variant.png", "stages_vs_concurrency.png", "latency_vs_concurrency.png",
                 "throughput_vs_concurrency.png", "locust_stage_shares.png"):
        path = runs / "report" / name
        assert f"]({name})" in text, name
        w, h = png_size(path)
        assert w > 300 and h > 150 and path.stat().st_size > 5000, name
    assert "report.md" in out.stdout


def test_report_without_runs(tmp_path):
    """Missing inputs name the command that makes them instead of failing."""
    run_tool("report", "--runs-dir", str(tmp_path))
    text = (tmp_path / "report" / "report.md").read_text()
    for command in ("make perf", "make locust", "make compare"):
        assert command in text


def test_sample_images_are_photos_of_several_sizes():
    samples = inputs.sample_images()
    assert {s.name for s in samples} >= {"bus.jpg", "zidane.jpg"}
    assert len({s.image.shape for s in samples}) >= 3
    quick = inputs.spread(samples, 3)
    assert len(quick) == 3 and len({s.image.shape for s in quick}) == 3
    bus = next(s for s in samples if s.name == "bus.jpg")
    assert bus.image.shape == (1080, 810, 3)


def test_bench_cpu_prints_every_figure_and_the_ratios(repo, server):
    """`make bench-cpu` in its shortest form: one round, a fraction of a second per figure. It
    starts its own server on the session's repository, and says so and why to `--url` (URL=);
    only the output's shape is checked."""
    out = run_tool("bench_cpu", "--repo", str(repo), "--seconds", "0.5", "--rounds", "1", "--url", server.url,
                   timeout=600).stdout
    assert out.startswith(f"bench-cpu: --url {server.url} not used: this benchmark starts its own tritonserver"), out
    for label in ("(a) raw ONNX Runtime", spec.variant("ort").ensemble, spec.variant("ort_fused").ensemble,
                  "(d) Ultralytics predict"):
        assert label in out, out[-3000:]
    remote = re.findall(r"encoded_vs_file_pixels_c1=([\d.]+), encoded_vs_pixels_c1=([\d.]+)", out)
    assert remote and len(remote) % 4 == 0, "every CPU variant of every scene, both ratios"
    assert all(float(x) > 0 for pair in remote for x in pair), remote
    load = re.search(r"saturation load: requests of (\d+) images", out)
    assert load and int(load.group(1)) >= 8, "an offline client's batch, whatever batch size the sweep ranked first"
    lines = out.strip().splitlines()
    assert lines[-2].startswith("latency_ratio=") and lines[-1].startswith("throughput_ratio="), lines[-4:]
    assert float(lines[-2].split("=")[1]) > 0 and float(lines[-1].split("=")[1]) > 0


@pytest.mark.parametrize("command", [["bench-cpu", "--scenes", "demo"], ["eval"]])
def test_a_tool_without_a_built_repository_names_the_fix(command, tmp_path):
    out = subprocess.run([sys.executable, "-m", "yolo_triton.cli", *command, "--repo", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "run `make build-engines`" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_bench_cpu_whose_server_cannot_start_says_why_in_one_line(repo, monkeypatch, capsys):
    """A launch the launcher refuses (here: NumPy 2 under the bundled stub) ends the benchmark with
    its reason, not a traceback."""
    from yolo_triton.perf import bench_cpu
    from yolo_triton.serve import launcher

    monkeypatch.setattr(launcher, "stub_numpy_version", lambda: "2.5.2")
    assert bench_cpu.main(["--repo", str(repo), "--scenes", "demo", "--seconds", "0.2", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "bench-cpu: NumPy 2.5.2 is installed for the models" in err and "numpy<2" in err, err[-2000:]


def test_bench_cpu_refuses_an_input_size_it_cannot_apply():
    """A built repository's size is fixed: `--imgsz` without `--weights` is an error, not ignored."""
    out = run_tool("bench_cpu", "--imgsz", "640", ok=False, timeout=120)
    assert out.returncode == 2 and "--imgsz needs --weights" in out.stderr, out.stderr[-2000:]


# --- the stage-metrics reader and the stage rows (no server) -------------------------------------

PROMETHEUS = """\
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="pipeline_ort",version="1"} 12
# HELP yolo_triton_stage_duration_us time spent in each pipeline stage, microseconds
# TYPE yolo_triton_stage_duration_us counter
yolo_triton_stage_duration_us{model="pipeline_ort",stage="preprocess"} 4000
yolo_triton_stage_duration_us{model="pipeline_ort",stage="network"} 200000
yolo_triton_stage_duration_us{model="pipeline_ort",stage="postprocess"} 6000
yolo_triton_stage_duration_us{model="pipeline_ort",stage="report"} 50
yolo_triton_stage_duration_us{model="preprocess",stage="preprocess"} 700.5
# HELP yolo_triton_executions_total execute() calls of a python model
# TYPE yolo_triton_executions_total counter
yolo_triton_executions_total{model="pipeline_ort"} 10
yolo_triton_executions_total{model="preprocess"} 3
# HELP yolo_triton_images_total images served by a python model's execute() calls
# TYPE yolo_triton_images_total counter
yolo_triton_images_total{model="pipeline_ort"} 20
yolo_triton_images_total{model="preprocess"} 3
odd_metric{note="a \\"quoted\\", comma",model="x"} NaN
"""


def test_metrics_parse_reads_names_labels_and_values():
    samples = metrics.parse(PROMETHEUS)
    assert ("yolo_triton_executions_total", {"model": "pipeline_ort"}, 10.0) in samples
    odd = next(labels for name, labels, _ in samples if name == "odd_metric")
    assert odd == {"note": 'a "quoted", comma', "model": "x"}
    assert not any(name.startswith("#") for name, _, _ in samples)


def test_metrics_snapshot_and_diff_give_ms_per_execution():
    before = metrics.snapshot(PROMETHEUS)
    assert set(before) == {"pipeline_ort", "preprocess"}  # only models that publish stage durations
    assert before["pipeline_ort"].executions == 10 and before["pipeline_ort"].images == 20
    assert "report" not in before["pipeline_ort"].stage_us  # the flushes' own cost is not a stage
    assert before["pipeline_ort"].behind and not before["preprocess"].behind  # 12 executions, 10 published
    later = (PROMETHEUS.replace('"preprocess"} 4000', '"preprocess"} 10000')
             .replace('"network"} 200000', '"network"} 500000')
             .replace('"postprocess"} 6000', '"postprocess"} 9000')
             .replace('total{model="pipeline_ort"} 10', 'total{model="pipeline_ort"} 13')
             .replace('total{model="pipeline_ort"} 20', 'total{model="pipeline_ort"} 26'))
    split = metrics.diff(before, metrics.snapshot(later))
    assert set(split) == {"pipeline_ort"}, "a model that did not execute in between has no split"
    s = split["pipeline_ort"]
    assert (s.executions, s.images) == (3, 6)
    assert s.ms == pytest.approx({"preprocess": 2.0, "network": 100.0, "postprocess": 1.0})
    assert s.ms_per_image == pytest.approx({"preprocess": 1.0, "network": 50.0, "postprocess": 0.5})
    assert metrics.diff(before, metrics.snapshot(later), ["preprocess"]) == {}


def test_metrics_reader_finds_none_where_nothing_is_published():
    assert metrics.snapshot("") == {} and metrics.snapshot("# only comments\nnv_gpu_utilization 0.5\n") == {}
    assert metrics.read(None) == {}
    assert metrics.read("http://127.0.0.1:9/metrics") == {}  # nothing listens there: no error, no metrics
    assert metrics.endpoint("10.0.0.5") == "http://10.0.0.5:8002/metrics"
    assert metrics.endpoint("10.0.0.5:9102") == "http://10.0.0.5:9102/metrics"
    assert metrics.endpoint("http://h:1/") == "http://h:1/metrics"
    assert metrics.for_grpc("127.0.0.1:8001") == "http://127.0.0.1:8002/metrics"


def test_fused_stage_rows_add_up_to_the_pipeline_models_time():
    """The fused model's queue and input handling go with preprocess, its output handling with
    postprocess, and what its stages do not cover is `pipeline glue`: the rows sum to its total."""
    fused = spec.variant("ort_fused")
    pipe = stats.StageTime(fused.pipeline, 6, 3, {"queue": 5.0, "compute_input": 0.5, "compute_infer": 110.0,
                                                  "compute_output": 0.25})
    split = metrics.StageSplit(fused.pipeline, 3, 6, {"preprocess": 6000.0, "network": 300000.0,
                                                      "postprocess": 3000.0})
    rows = {r["stage"]: r for r in stages.rows(fused, {fused.pipeline: pipe}, {fused.pipeline: split}, "test")}
    assert list(rows) == [*spec.STAGES, stages.GLUE]
    assert rows["preprocess"]["total_ms"] == pytest.approx(5.0 + 0.5 + 2.0)
    assert rows["network"]["compute_infer_ms"] == pytest.approx(100.0)
    assert rows["postprocess"]["total_ms"] == pytest.approx(1.0 + 0.25)
    assert rows[stages.GLUE]["total_ms"] == pytest.approx(110.0 - 103.0)
    assert sum(r["total_ms"] for r in rows.values()) == pytest.approx(pipe.total_ms)
    without = stages.rows(fused, {fused.pipeline: pipe}, {}, "test")
    assert [r["stage"] for r in without] == [stages.WHOLE] and without[0]["total_ms"] == pytest.approx(pipe.total_ms)
    staged = spec.variant("ort")
    times = {m: stats.StageTime(m, 4, 2, dict.fromkeys(stats.PHASES, 1.0)) for m in STAGE_MODELS.values()}
    assert {r["stage"]: r["composing_model"] for r in stages.rows(staged, times, {}, "test")} == STAGE_MODELS


def test_perf_analyzer_command_lines():
    data = Path("input.json")
    sweep = perf_analyzer.command(perf_analyzer.Request("m", "h:1", data, extra=("--verbose-csv",)),
                                  perf_analyzer.Load(0, 2.5, "poisson"), "x.csv", perf_analyzer.fixed_count(8))
    text = " ".join(sweep)
    assert " -m m -i grpc -u h:1 -b 1 --input-data input.json -f x.csv --verbose-csv " in text
    assert "--request-rate-range 2.5 --async --request-distribution poisson --request-count 8" in text
    gpu = perf_analyzer.command(perf_analyzer.Request("m", "h:1", data, batch=8, shape=(810, 1080, 3)),
                                perf_analyzer.Load(16), "y.csv", perf_analyzer.time_windows(2000, 10, 6))
    assert "--concurrency-range 16" in " ".join(gpu) and "IMAGE:810,1080,3" in gpu
    assert gpu[-6:] == ["--measurement-interval", "2000", "-s", "10", "-r", "6"]
