"""The measurement tools run for real, in their quick mode, against the session's tritonserver:
perf_analyzer sweeps, a Locust load test, the YOLOv8n/YOLOv5n comparison and the report.
Assertions are on the files they write (columns, non-zero figures, composing models, valid
PNGs), never on how fast anything was."""

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
from yolo_triton.perf import tools as perf_tools

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "perf"
STAGE_MODELS = {"preprocess": "preprocess", "detector": "detector_ort", "postprocess": "postprocess"}


def run_tool(script: str, *args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(PERF / script), *args], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    if ok:
        assert out.returncode == 0, f"{script} exit {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def variant(server) -> str:
    """The ensemble a CPU-only server runs (the ort variant) — the one the checks below name."""
    assert spec.variant("ort").ensemble in perf_tools.loaded_variants(server.url)
    return spec.variant("ort").ensemble


@pytest.fixture(scope="module")
def perf_run(server, runs: Path) -> tuple[Path, str]:
    out = run_tool("perf_sweep.py", "--url", server.url, "--quick", "--runs-dir", str(runs))
    run = perf_tools.latest_run("perf", runs)
    assert run is not None, out.stdout
    return run, out.stdout


@pytest.fixture(scope="module")
def locust_run(server, runs: Path) -> tuple[Path, str]:
    out = run_tool("locust_run.py", "--url", server.url, "--quick", "--runs-dir", str(runs))
    run = perf_tools.latest_run("locust", runs)
    assert run is not None, out.stdout
    return run, out.stdout


@pytest.fixture(scope="module")
def compare_run(server, repo: Path, runs: Path) -> tuple[Path, str]:
    out = run_tool("compare.py", "--url", server.url, "--repo", str(repo), "--quick", "--no-download",
                   "--runs-dir", str(runs))
    run = perf_tools.latest_run("compare", runs)
    assert run is not None, out.stdout
    return run, out.stdout


# --- perf_analyzer ------------------------------------------------------------------------------


def test_perf_analyzer_binary_runs_here():
    assert "2.51" in perf_tools.perf_analyzer_version()


def test_perf_sweep_latency_csv(perf_run, variant):
    run, stdout = perf_run
    assert set(header(run / "latency.csv")) >= {"model", "mode", "load", "throughput", "p50_ms", "p90_ms", "p95_ms",
                                                 "p99_ms", "avg_ms", "stable"}
    rows = perf_tools.read_csv(run / "latency.csv")
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
    stages = perf_tools.read_csv(run / "stages.csv")
    levels = {(r["mode"], r["load"]) for r in perf_tools.read_csv(run / "latency.csv") if r["model"] == variant}
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


def test_perf_sweep_sends_real_photos(perf_run):
    """The input data is the photos themselves, each with its own shape: decoding the JSON gives
    back the pixels of the files named in the run's record."""
    run, _ = perf_run
    meta = perf_tools.read_meta(run)
    data = json.loads((run / "input_data.json").read_text())["data"]
    assert len(data) == len(meta["images"]) >= 3
    photos = {s.name: s.image for s in perf_tools.sample_images()}
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
    agg = next(r for r in perf_tools.read_csv(run / "locust_stats.csv") if r["Name"] == "Aggregated")
    assert agg["Request Count"] > 0 and agg["Failure Count"] == 0
    assert agg["Average Response Time"] > 0 and agg["Requests/s"] > 0
    assert "<html" in (run / "locust.html").read_text()[:2000].lower()
    meta = perf_tools.read_meta(run)
    assert meta["requests"] == int(agg["Request Count"]) and meta["failures"] == 0


def test_locust_stage_shares(locust_run):
    run, _ = locust_run
    rows = {r["stage"]: r for r in perf_tools.read_csv(run / "stages.csv")}
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
        [sys.executable, "-m", "locust", "-f", str(PERF / "locustfile.py"), "--headless", "-u", "1", "-r", "1",
         "-t", "3s", "--csv", str(prefix), "--triton-url", server.url, "--triton-model", "no_such_model",
         "--think-time", "0.2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]  # Locust's exit code on failures
    agg = next(r for r in perf_tools.read_csv(Path(f"{prefix}_stats.csv")) if r["Name"] == "Aggregated")
    assert agg["Request Count"] > 0 and agg["Failure Count"] == agg["Request Count"]
    failures = perf_tools.read_csv(Path(f"{prefix}_failures.csv"))
    assert failures and "no_such_model" in str(failures[0]["Error"])


# --- comparison ---------------------------------------------------------------------------------


def test_compare_tables(compare_run, variant):
    run, stdout = compare_run
    assert set(header(run / "compare.csv")) >= {"name", "kind", "params_m", "gflops", "preprocess_ms",
                                                "inference_ms", "postprocess_ms", "end_to_end_ms"}
    rows = {r["name"]: r for r in perf_tools.read_csv(run / "compare.csv")}
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
    out = run_tool("report.py", "--runs-dir", str(runs))
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
    run_tool("report.py", "--runs-dir", str(tmp_path))
    text = (tmp_path / "report" / "report.md").read_text()
    for command in ("make perf", "make locust", "make compare"):
        assert command in text


def test_sample_images_are_photos_of_several_sizes():
    samples = perf_tools.sample_images()
    assert {s.name for s in samples} >= {"bus.jpg", "zidane.jpg"}
    assert len({s.image.shape for s in samples}) >= 3
    quick = perf_tools.spread(samples, 3)
    assert len(quick) == 3 and len({s.image.shape for s in quick}) == 3
    bus = next(s for s in samples if s.name == "bus.jpg")
    assert bus.image.shape == (1080, 810, 3)


def test_bench_cpu_prints_every_figure_and_the_ratios(repo):
    """`make bench-cpu` in its shortest form: one round, a fraction of a second per figure. It
    starts its own server on the session's repository; only the output's shape is checked."""
    out = run_tool("bench_cpu.py", "--repo", str(repo), "--seconds", "0.5", "--rounds", "1", timeout=600).stdout
    for label in ("(a) raw ONNX Runtime", spec.variant("ort").ensemble, spec.variant("ort_fused").ensemble,
                  "(d) Ultralytics predict"):
        assert label in out, out[-3000:]
    load = re.search(r"saturation load: requests of (\d+) images", out)
    assert load and int(load.group(1)) >= 8, "an offline client's batch, whatever batch size the sweep ranked first"
    lines = out.strip().splitlines()
    assert lines[-2].startswith("latency_ratio=") and lines[-1].startswith("throughput_ratio="), lines[-4:]
    assert float(lines[-2].split("=")[1]) > 0 and float(lines[-1].split("=")[1]) > 0


def test_bench_cpu_refuses_an_input_size_it_cannot_apply():
    """A built repository's size is fixed: `--imgsz` without `--weights` is an error, not ignored."""
    out = run_tool("bench_cpu.py", "--imgsz", "640", ok=False, timeout=120)
    assert out.returncode == 2 and "--imgsz needs --weights" in out.stderr, out.stderr[-2000:]
