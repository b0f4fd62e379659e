"""GPU benchmark: the served GPU ensemble next to the raw network and Ultralytics' predict.

    yolo-triton bench-gpu [--weights yolov8n.yaml] [--imgsz 640] [--image bus.jpg] [--quick]

Measured in one run, on this machine's GPU, with the same weights and the same image:
  (1) Ultralytics' own predict in FP16 (`YOLO(w).predict(img, quantize=16, device=0)`, i.e.
      `half=True` under its current name), median of
      many calls after warm-up: the baseline a user has without a server;
  (2) the raw network as the GPU detector runs it (the exported artefact in FP16, compiled by
      TorchInductor, replayed from CUDA graphs), batch 1 latency and batch 64 throughput, timed
      with CUDA events: the floor no pipeline around it can beat; the same without compiling
      is printed beside it;
  (3) the served GPU variants under perf_analyzer: the staged ensemble `yolov8n_gpu` and the fused
      `yolov8n_gpu_fused` (one python model, `pipeline_gpu`): median latency at concurrency 1
      (plain gRPC, and with the image in CUDA shared memory, i.e. already on the GPU as a camera
      pipeline would hand it over), and images/s at saturation; per-model time from Triton's
      statistics around every run, and the fused model's stage metrics where it publishes them.
      The "remote client" level (c1-remote-jpeg) sends the photo's own JPEG bytes (IMAGE_BYTES,
      decoded by nvJPEG on the server) over gRPC without shared memory.
      The fused pipeline's own stages (letterbox, network, NMS) are timed in this process on the
      same image, with a synchronisation after each (yolo_triton.perf.gpu_baselines).
Ends with the ratios (served c1 / raw, Ultralytics / served) and the issue's targets, judged on
the fastest served variant (named).

The repository is built from --weights under runs/bench-gpu/ (git-ignored) unless --repo is
given. `yolov8n.yaml` (default) is the real YOLOv8n architecture with seeded random weights: the
network costs what yolov8n.pt costs, but detects nothing, so NMS has no work (noted in the output).
Results: runs/bench-gpu/<timestamp>/{results.json, summary.txt, perf_analyzer/, tritonserver.log}.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.client import images
from yolo_triton.client.detector import DetectorClient
from yolo_triton.paths import RUNS, SAMPLES
from yolo_triton.perf import inputs, metrics, perf_analyzer, stages, stats
from yolo_triton.perf.gpu_baselines import pipeline_in_process, raw_network, ultralytics_predict
from yolo_triton.perf.probe import Probe, Window
from yolo_triton.perf.runs import run_dir, shown, write_meta
from yolo_triton.perf.target import build_repo, variant_of
from yolo_triton.repository import configs as repository
from yolo_triton.serve import http_proxy
from yolo_triton.serve.launcher import Server

TARGET_C1_MS = 2.4
TARGET_SPEEDUP = 3.5
TARGET_IMG_S = 3000.0
TARGET_REMOTE_MS = 2.5  # remote client (encoded JPEG, gRPC, no shared memory), c1 p50
TARGET_REMOTE_OVER_CUDASHM_MS = 1.0
PA_TIMEOUT_S = 90
DEFAULT_MODELS = f"{spec.variant('gpu').ensemble},{spec.variant('gpu_fused').ensemble}"


def stage_models(model: str) -> list[str]:
    """The models whose Triton statistics make up a served variant's per-stage table."""
    v = variant_of(model)
    return [model, *v.models[:-1]] if v else [model]


@dataclass
class PaResult:
    label: str
    model: str
    shm: str
    concurrency: int
    batch: int
    protocol: str = "grpc"
    img_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    avg_ms: float = 0.0
    server_ms: dict[str, float] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)
    command: str = ""
    ok: bool = False
    note: str = ""


def default_image() -> Path:
    shipped = SAMPLES / "bus.jpg"
    if shipped.exists():
        return shipped
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / "bus.jpg"


# --- (3) served ensemble --------------------------------------------------------------------------


def measure_level(server: Server, data: Path, r: PaResult, out_dir: Path, interval_ms: int, probe: Probe,
                  shape: tuple[int, ...]) -> PaResult:
    """One perf_analyzer level; fills r with p50/p99/throughput and the per-stage breakdown.

    A level that does not settle within 10% over 6 windows is measured once more over a fixed
    number of requests (no stability search) and says so in its note.
    """
    url = server.http_url if r.protocol == "http" else server.url
    if r.shm == "encoded":  # IMAGE_BYTES: the file's bytes in the message, no shape to give
        data, shape, shm = data.with_name("input_encoded.json"), None, "none"
    else:
        shm = r.shm
    req = perf_analyzer.Request(r.model, url, data, r.protocol, r.batch, shape, shm, server.url,
                                ("--percentile", "50"))
    out = perf_analyzer.measure(req, perf_analyzer.Load(r.concurrency), out_dir, r.label,
                                perf_analyzer.time_windows(interval_ms, 10, 6),
                                perf_analyzer.fixed_count(max(3000 // r.batch, 50 * r.concurrency)), PA_TIMEOUT_S,
                                probe)
    r.command = out.commands[-1]
    if not out.stable:
        r.note = "unstable over 6 windows: fixed request count"
    if not out.ok:
        r.note = f"perf_analyzer exit {out.rc}: " + " | ".join(out.text.strip().splitlines()[-3:])[:400]
        return r
    lat = perf_analyzer.latency(out.row)
    r.img_s, r.p50_ms, r.p99_ms, r.avg_ms = lat["throughput"], lat["p50_ms"], lat["p99_ms"], lat["avg_ms"]
    r.server_ms = {col: lat[ours] for col, ours in perf_analyzer.BREAKDOWN.items()}
    window = out.window if isinstance(out.window, Window) else Window()
    r.stages = [stats.as_row(window.times[m]) for m in stage_models(r.model) if m in window.times]
    r.stages += [row for split in window.splits.values() for row in stages.split_rows(split)]
    r.ok = True
    return r


def set_instances(repo: Path, model: str, count: int) -> None:
    """Give one model of the benchmark's own repository `count` GPU instances."""
    path = repo / model / "config.pbtxt"
    cfg = repository.parse(path.read_text())
    for group in cfg.instance_group:
        group.count = count
    path.write_text(repository.render(cfg))


def served(repo: Path, image: np.ndarray, run: Path, models: list[str], levels: list[PaResult],
           interval_ms: int, photo: Path) -> tuple[list[PaResult], dict]:
    data = inputs.write_input_data([image], run / "perf_analyzer" / "input.json", with_defaults=True)
    inputs.write_encoded_input_data([photo.read_bytes()], data.with_name("input_encoded.json"))
    keys = sorted({v.key for v in spec.VARIANTS if v.ensemble in models or v.pipeline in models})
    results, check = [], {}
    http = any(level.protocol == "http" for level in levels)
    if http:  # HTTP is served only behind nginx (docs/security.md)
        try:
            http_proxy.find_nginx()
        except http_proxy.ProxyUnavailable as e:
            print(f"HTTP levels skipped: {e}", flush=True)
            levels, http = [level for level in levels if level.protocol != "http"], False
    with Server(repo, log=run / "tritonserver.log", only=keys, http=http) as server:
        print(server.describe(), flush=True)
        metrics_url = metrics.for_grpc(server.url, server.ports.metrics)
        for model in models:
            with DetectorClient(server.url, model=model, timeout_s=120) as client:
                probe = Probe(client, metrics_url, [model])
                result = client.detect(image)  # also the last warm-up
                check[model] = {"detections": int(len(result.detections.scores)),
                                "first_request_ms": result.latency_ms}
                for level in levels:
                    r = PaResult(f"{model}.{level.label}", model, level.shm, level.concurrency, level.batch,
                                 level.protocol)
                    print(f"  perf_analyzer {r.label}: concurrency {r.concurrency} x batch {r.batch}, "
                          f"shared memory {r.shm}, {r.protocol} ...", flush=True)
                    measure_level(server, data, r, run / "perf_analyzer", interval_ms, probe, image.shape)
                    print(f"    {r.p50_ms:.3f} ms p50, {r.img_s:.1f} img/s {r.note}", flush=True)
                    results.append(r)
    return results, check


def remote_checks(levels: list[PaResult]) -> list[tuple[str, bool, str]]:
    """The remote-client targets, per model: encoded c1 against the bound and its CUDA-shm c1."""
    out = []
    for r in levels:
        if not (r.ok and r.shm == "encoded" and r.concurrency == 1):
            continue
        out.append((f"{r.label} <= {TARGET_REMOTE_MS:.1f} ms", r.p50_ms <= TARGET_REMOTE_MS, f"{r.p50_ms:.3f} ms"))
        shm = [s for s in levels if s.ok and s.model == r.model and s.shm == "cuda" and s.concurrency == 1
               and s.protocol == "grpc"]
        if shm:
            extra = r.p50_ms - shm[0].p50_ms
            out.append((f"{r.label} <= {shm[0].label} + {TARGET_REMOTE_OVER_CUDASHM_MS:.1f} ms",
                        extra <= TARGET_REMOTE_OVER_CUDASHM_MS, f"+{extra:.3f} ms"))
    return out


# --- main ------------------------------------------------------------------------------------------


def parse_levels(text: str) -> list[PaResult]:
    """'c1-grpc:none:1:1,...' = label:shm:concurrency:batch[:protocol], protocol grpc (default) or http."""
    out = []
    for item in text.split(","):
        fields = item.split(":")
        if len(fields) not in (4, 5):
            raise argparse.ArgumentTypeError(f"a level is label:shm:concurrency:batch[:protocol], got {item!r}")
        label, shm, conc, batch, protocol = (*fields, "grpc") if len(fields) == 4 else fields
        if shm not in ("none", "system", "cuda", "encoded"):
            raise argparse.ArgumentTypeError(f"shared memory must be none, system, cuda or encoded (the file's "
                                             f"bytes in the message), got {shm!r}")
        if protocol not in ("grpc", "http"):
            raise argparse.ArgumentTypeError(f"protocol must be grpc or http, got {protocol!r}")
        out.append(PaResult(label, "", shm, int(conc), int(batch), protocol))
    return out


# c1 over HTTP too: for a small request (the image already in CUDA shared memory) the protocol's
# own cost is a visible part of the end-to-end figure.
DEFAULT_LEVELS = ("c1-grpc:none:1:1,c1-cudashm:cuda:1:1,c1-http-cudashm:cuda:1:1:http,"
                  "c1-remote-jpeg:encoded:1:1,sat-c16xb8-cudashm:cuda:16:8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="yolov8n.yaml", help="checkpoint or architecture yaml (default %(default)s)")
    ap.add_argument("--imgsz", type=int, default=None, help="input size (default: the checkpoint's)")
    ap.add_argument("--repo", type=Path, default=None, help="use this built repository instead of building one")
    ap.add_argument("--image", type=Path, default=None, help="default: bus.jpg (1080x810)")
    ap.add_argument("--levels", type=parse_levels, default=parse_levels(DEFAULT_LEVELS),
                    help="perf_analyzer levels, label:shm:concurrency:batch,... (default %(default)s)")
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="served models to measure, comma-separated (default %(default)s)")
    ap.add_argument("--pipeline-instances", type=int, default=0,
                    help="GPU instances of pipeline_gpu in the benchmark's repository (default: as generated)")
    ap.add_argument("--quick", action="store_true", help="shorter measurements (a smoke test, not a result)")
    args = ap.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("bench-gpu: torch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU visible to torch: nothing to measure here (run it on a GPU machine)",
              file=sys.stderr)
        return 2
    image_path = args.image or default_image()
    image = images.read(image_path)
    h, w = image.shape[:2]
    run = run_dir("bench-gpu")
    (run / "perf_analyzer").mkdir()

    if Path(args.weights).exists():  # the build exports from a temporary folder: make the path absolute
        args.weights = str(Path(args.weights).resolve())
    repo = args.repo
    if repo is None:
        tag = Path(args.weights).stem + (f"-{args.imgsz}" if args.imgsz else "")
        repo = RUNS / "bench-gpu" / "repos" / tag
        if not build_repo(args.weights, repo, args.imgsz):
            return 2
    if args.pipeline_instances:
        set_instances(repo, spec.variant("gpu_fused").pipeline, args.pipeline_instances)
    facts = repository.read_facts(repo)
    artefact = repo / spec.variant("gpu").detector / "1" / spec.variant("gpu").artefact
    gpu_name = torch.cuda.get_device_name(0)
    print(f"bench-gpu: {gpu_name}; weights {facts.source}, imgsz {facts.imgsz}, {len(facts.names)} classes; "
          f"image {image_path.name} {w}x{h}", flush=True)
    runs = 60 if args.quick else 200
    interval = 1000 if args.quick else 2000

    print("(1) Ultralytics predict, FP16", flush=True)
    ul = ultralytics_predict(facts.source, image, facts.imgsz, runs)
    torch.cuda.empty_cache()
    print(f"    median {ul['median_ms']:.3f} ms", flush=True)
    print("(2) raw network: served artefact, FP16, CUDA graphs", flush=True)
    raw = raw_network(artefact, facts.imgsz, runs)
    torch.cuda.empty_cache()
    big = int(raw["graph_batch"])
    print(f"    {raw['note']}: batch 1 {raw['graph_b1_ms']:.3f} ms, batch {big} {raw[f'graph_b{big}_ms']:.3f} ms = "
          f"{raw[f'graph_b{big}_img_s']:.0f} img/s", flush=True)
    print(f"    uncompiled graph: batch 1 {raw['exported_graph_b1_ms']:.3f} ms, batch {big} "
          f"{raw[f'exported_graph_b{big}_ms']:.3f} ms = {raw[f'exported_graph_b{big}_img_s']:.0f} img/s; "
          f"eager (no graph) batch 1 {raw['eager_b1_ms']:.3f} ms", flush=True)
    print("(2) fused pipeline in this process, bus.jpg already on the GPU, batch 1", flush=True)
    fused = pipeline_in_process(artefact, facts.imgsz, image, runs)
    torch.cuda.empty_cache()
    print("    " + ", ".join(f"{k} {v:.3f}" for k, v in fused.items()), flush=True)
    print("(3) served GPU variants under perf_analyzer", flush=True)
    models = [m for m in args.models.split(",") if m]
    levels, check = served(repo, image, run, models, args.levels, interval, image_path)

    c1 = [r for r in levels if r.ok and r.concurrency == 1]
    sat = [r for r in levels if r.ok and r.concurrency > 1]
    best_c1 = min(c1, key=lambda r: r.p50_ms) if c1 else None
    best_sat = max(sat, key=lambda r: r.img_s) if sat else None

    lines = [f"bench-gpu {time.strftime('%Y-%m-%d %H:%M')} on {gpu_name}: weights {facts.source}, imgsz "
             f"{facts.imgsz}, image {image_path.name} {w}x{h}, first served request found "
             + ", ".join(f"{c['detections']} detections ({m})" for m, c in check.items())]
    if facts.source.endswith((".yaml", ".yml")):
        lines.append("  (random weights: the network costs what the trained one does, but NMS gets no boxes)")
    lines += ["", f"{'':<60}{'p50 ms':>9}{'p99 ms':>9}{'img/s':>9}",
              f"{'(1) Ultralytics predict FP16, 1 image':<60}{ul['median_ms']:>9.3f}{'':>9}"
              f"{1e3 / ul['median_ms']:>9.0f}",
              f"{'(2) raw FP16 CUDA graph, batch 1':<60}{raw['graph_b1_ms']:>9.3f}{'':>9}"
              f"{1e3 / raw['graph_b1_ms']:>9.0f}",
              f"{f'(2) raw FP16 CUDA graph, batch {big}':<60}{raw[f'graph_b{big}_ms']:>9.3f}{'':>9}"
              f"{raw[f'graph_b{big}_img_s']:>9.0f}",
              f"{'(2) fused pipeline in process, batch 1':<60}{fused['total_ms']:>9.3f}",
              "    stages, synchronised: " + ", ".join(f"{k[:-3]} {fused[k]:.3f} ms" for k in fused if k != "total_ms")]
    for r in levels:
        label = f"(3) {r.label} (c{r.concurrency} x b{r.batch})"
        if r.ok:
            lines.append(f"{label:<60}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.img_s:>9.0f}  {r.note}")
        else:
            lines.append(f"{label:<60}  FAILED: {r.note}")
    lines.append("")
    for r in levels:
        if r.ok:
            lines.append(f"per stage, {r.label} (Triton statistics, mean ms per request over the run; "
                         "model:stage rows: stage metrics, ms per execution):")
            lines.append(textwrap.indent(stats.table(r.stages), "  "))
            sm = r.server_ms
            lines.append("  perf_analyzer (us->ms): " + ", ".join(f"{k} {v:.3f}" for k, v in sm.items()))
    lines.append("")
    if best_c1:
        lines.append(f"ratio served c1 ({best_c1.label}) / raw batch 1 = {best_c1.p50_ms / raw['graph_b1_ms']:.2f}")
        lines.append(f"ratio Ultralytics / served c1 = {ul['median_ms'] / best_c1.p50_ms:.2f}x faster")
    if best_sat:
        lines.append(f"ratio served saturated ({best_sat.label}) / raw batch {big} = "
                     f"{best_sat.img_s / raw[f'graph_b{big}_img_s']:.2f}")
    lines.append("")
    checks = []
    if best_c1:
        checks.append((f"c1 median latency <= {TARGET_C1_MS:.1f} ms", best_c1.p50_ms <= TARGET_C1_MS,
                       f"{best_c1.p50_ms:.3f} ms, {best_c1.label}"))
        speedup = ul["median_ms"] / best_c1.p50_ms
        checks.append((f"c1 >= {TARGET_SPEEDUP:.1f}x faster than Ultralytics predict", speedup >= TARGET_SPEEDUP,
                       f"{speedup:.2f}x, {best_c1.label}"))
    if best_sat:
        checks.append((f"saturated >= {TARGET_IMG_S:.0f} img/s", best_sat.img_s >= TARGET_IMG_S,
                       f"{best_sat.img_s:.0f} img/s, {best_sat.label}"))
    checks += remote_checks(levels)
    for name, ok, value in checks:
        lines.append(f"target {name}: {'MET' if ok else 'MISSED'} ({value})")
    summary = "\n".join(lines)
    print("\n" + summary, flush=True)
    (run / "summary.txt").write_text(summary + "\n")
    results = {"gpu": gpu_name, "weights": facts.source, "imgsz": facts.imgsz, "image": image_path.name,
               "ultralytics": ul, "raw": raw, "fused_in_process": fused, "served": [asdict(r) for r in levels],
               "check": check}
    (run / "results.json").write_text(json.dumps(results, indent=1))
    write_meta(run, "bench-gpu", {"summary": str(run / "summary.txt")})
    print(f"\nbench-gpu: results in {shown(run)}")
    return 0  # a missed target is reported above, not an error of the tool


if __name__ == "__main__":
    sys.exit(main())
