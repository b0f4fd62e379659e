"""GPU benchmark: the served GPU ensemble next to the raw network and Ultralytics' predict.

    yolo-triton bench-gpu [--scenes crowded,empty | --weights W] [--image bus.jpg] [--quick]

Two scenes in one run, by default, on the same image: `crowded`, the project's own crowded-scene
checkpoint (yolo_triton.data.crowded: about 190 boxes on bus.jpg, so decode and NMS do a crowded
scene's work), then `empty`, the same network with seeded weights that detect nothing (what the
glue costs when NMS has no work). Each scene prints how many boxes the image had. Per scene,
measured on this machine's GPU with that scene's weights:
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
      decoded on the server: on the GPU, or on the host with --host-jpeg) over gRPC without
      shared memory.
      The fused pipeline's own stages (letterbox, network, NMS) are timed in this process on the
      same image, with a synchronisation after each (yolo_triton.perf.gpu_baselines).
Each scene ends with its ratios (served c1 / raw, Ultralytics / served, saturated / raw) and
targets (yolo_triton.perf.gpu_summary), judged on the fastest served level (named).

Each scene's repository is built under runs/bench-gpu/repos/ (git-ignored) unless --repo is given.
Results: runs/bench-gpu/<timestamp>/{results.json, summary.txt, <scene>/perf_analyzer/, <scene>/tritonserver.log}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.client import images
from yolo_triton.client.detector import DetectorClient
from yolo_triton.data import crowded
from yolo_triton.paths import RUNS, SAMPLES
from yolo_triton.perf import gpu_summary, inputs, metrics, perf_analyzer, stages, stats
from yolo_triton.perf.gpu_baselines import pipeline_in_process, raw_network, ultralytics_predict
from yolo_triton.perf.probe import Probe, Window
from yolo_triton.perf.runs import run_dir, shown, write_meta
from yolo_triton.perf.target import build_repo, reported, variant_of
from yolo_triton.repository import configs as repository
from yolo_triton.serve import http_proxy
from yolo_triton.serve.launcher import Server

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


def tune_model(repo: Path, model: str, instances: int = 0, params: dict[str, str] | None = None) -> None:
    """Change one model of the benchmark's own repository: `instances` GPU instances (0: as
    generated), and config parameters set to these values."""
    if not instances and not params:
        return
    path = repo / model / "config.pbtxt"
    cfg = repository.parse(path.read_text())
    for group in cfg.instance_group:
        group.count = instances or group.count
    for key, value in (params or {}).items():
        cfg.parameters[key].string_value = value
    path.write_text(repository.render(cfg))


def decoder_params(host_jpeg: bool, own_repo: bool) -> dict[str, str] | None:
    """The GPU models' JPEG decoder for this run. The benchmark's own repositories are reused
    between runs, so theirs is set either way (a run after `--host-jpeg` decodes on the GPU again);
    a repository named by --repo keeps its configs unless --host-jpeg asks."""
    if host_jpeg or own_repo:
        return {"nvjpeg": "0" if host_jpeg else "1"}
    return None


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
# own cost is a visible part of the end-to-end figure. Saturation at two loads: 16 x 8 images in
# flight left the batcher about 34 images an execute (H100, 2026-12-07), 32 x 8 about 63, the
# largest CUDA-graph batch the raw network's throughput is measured at; the higher is the figure.
SATURATION_LEVELS = "sat-c16xb8-cudashm:cuda:16:8,sat-c32xb8-cudashm:cuda:32:8"
DEFAULT_LEVELS = ("c1-grpc:none:1:1,c1-cudashm:cuda:1:1,c1-http-cudashm:cuda:1:1:http,"
                  f"c1-remote-jpeg:encoded:1:1,{SATURATION_LEVELS}")
# The empty scene, kept beside the crowded one: what the glue costs when NMS has nothing to do.
EMPTY_LEVELS = f"c1-cudashm:cuda:1:1,{SATURATION_LEVELS}"
# Scene name -> weights. `crowded` is the project's own crowded-scene checkpoint (about 190 boxes
# on bus.jpg); `yolov8n.yaml` is the same network with seeded weights that detect nothing.
SCENES = {"crowded": crowded.NAME, "empty": "yolov8n.yaml"}


@dataclass
class Scene:
    """Everything measured on one set of weights: the baselines and the served levels."""

    name: str
    facts: repository.ModelFacts
    ultralytics: dict
    raw: dict
    fused: dict
    levels: list[PaResult]
    check: dict



def measure_scene(name: str, weights: str, args: argparse.Namespace, levels: list[PaResult], image_path: Path,
                  run: Path) -> Scene | None:
    """Build the scene's repository (unless --repo), then (1) Ultralytics, (2) the raw network and the
    in-process pipeline, (3) the served levels; None when the build failed (it says why)."""
    import torch

    image = images.read(image_path)
    if Path(weights).exists():  # the build exports from a temporary folder: make the path absolute
        weights = str(Path(weights).resolve())
    repo = args.repo
    if repo is None:
        tag = Path(weights).stem + (f"-{args.imgsz}" if args.imgsz else "")
        repo = RUNS / "bench-gpu" / "repos" / tag
        if not build_repo(weights, repo, args.imgsz):
            return None
    artefact = repo / spec.variant("gpu").detector / "1" / spec.variant("gpu").artefact
    if not artefact.exists():
        print(f"bench-gpu: {shown(repo)} has no GPU detector ({shown(artefact)} is missing); build it with "
              f"`yolo-triton build --repo {shown(repo)} --weights <checkpoint> --gpu-artefact`", file=sys.stderr)
        return None
    decoder = decoder_params(args.host_jpeg, own_repo=args.repo is None)
    tune_model(repo, spec.variant("gpu_fused").pipeline, args.pipeline_instances, decoder)
    tune_model(repo, spec.variant("gpu").preprocess, params=decoder)
    facts = repository.read_facts(repo)
    runs = 60 if args.quick else 200
    print(f"== scene {name}: weights {facts.source}, imgsz {facts.imgsz}, {len(facts.names)} classes", flush=True)
    print("(1) Ultralytics predict, FP16", flush=True)
    ul = ultralytics_predict(facts.source, image, facts.imgsz, runs)
    torch.cuda.empty_cache()
    print(f"    median {ul['median_ms']:.3f} ms, {ul['boxes']} boxes", flush=True)
    print("(2) raw network: served artefact, FP16, CUDA graphs", flush=True)
    raw = raw_network(artefact, facts.imgsz, runs)
    torch.cuda.empty_cache()
    print("    " + gpu_summary.raw_line(raw), flush=True)
    print("(2) fused pipeline in this process, the image already on the GPU, batch 1", flush=True)
    fused = pipeline_in_process(artefact, facts.imgsz, image, runs)
    torch.cuda.empty_cache()
    print("    " + ", ".join(f"{k} {v:.3f}" for k, v in fused.items()), flush=True)
    print("(3) served GPU variants under perf_analyzer", flush=True)
    models = [m for m in args.models.split(",") if m]
    served_levels, check = served(repo, image, run / name, models, levels, 1000 if args.quick else 2000, image_path)
    return Scene(name, facts, ul, raw, fused, served_levels, check)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", default=",".join(SCENES),
                    help=f"scenes to measure, in order, of {sorted(SCENES)} (default %(default)s)")
    ap.add_argument("--weights", default=None,
                    help="one scene of these weights (checkpoint, architecture yaml or `crowded`) instead of --scenes")
    ap.add_argument("--imgsz", type=int, default=None, help="input size (default: the checkpoint's)")
    ap.add_argument("--repo", type=Path, default=None, help="use this built repository (one scene) instead of building")
    ap.add_argument("--image", type=Path, default=None, help="default: bus.jpg (1080x810)")
    ap.add_argument("--levels", type=parse_levels, default=DEFAULT_LEVELS,
                    help="levels of the first scene, label:shm:concurrency:batch,... (default %(default)s)")
    ap.add_argument("--empty-levels", type=parse_levels, default=EMPTY_LEVELS,
                    help="perf_analyzer levels of the other scenes (default %(default)s)")
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="served models to measure, comma-separated (default %(default)s)")
    ap.add_argument("--pipeline-instances", type=int, default=0,
                    help="GPU instances of pipeline_gpu in the benchmark's repository (default: as generated)")
    ap.add_argument("--host-jpeg", action="store_true",
                    help="decode JPEG IMAGE_BYTES on the host (config `nvjpeg: \"0\"`) instead of on the GPU")
    ap.add_argument("--quick", action="store_true", help="shorter measurements (a smoke test, not a result)")
    args = ap.parse_args(argv)
    if args.weights or args.repo:
        scenes = {Path(args.weights or str(args.repo)).stem: args.weights or ""}
    else:
        unknown = [s for s in args.scenes.split(",") if s not in SCENES]
        if unknown:
            ap.error(f"unknown scene(s) {unknown}: choose from {sorted(SCENES)}")
        scenes = {s: SCENES[s] for s in args.scenes.split(",")}

    try:
        import torch
    except ImportError:
        print("bench-gpu: torch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU visible to torch: nothing to measure here (run it on a GPU machine)",
              file=sys.stderr)
        return 2
    return reported("bench-gpu", lambda: _measure(scenes, args, torch.cuda.get_device_name(0)))


def _measure(scenes: dict[str, str], args: argparse.Namespace, gpu_name: str) -> int:
    image_path = args.image or default_image()
    run = run_dir("bench-gpu")
    h, w = images.read(image_path).shape[:2]
    print(f"bench-gpu: {gpu_name}; image {image_path.name} {w}x{h}; scenes {', '.join(scenes)}", flush=True)
    measured = []
    for i, (name, weights) in enumerate(scenes.items()):
        (run / name / "perf_analyzer").mkdir(parents=True)
        scene = measure_scene(name, weights, args, args.levels if i == 0 else args.empty_levels, image_path, run)
        if scene is None:
            return 2
        measured.append(scene)

    header = f"bench-gpu {time.strftime('%Y-%m-%d %H:%M')} on {gpu_name}: image {image_path.name} {w}x{h}"
    summary = "\n".join([header, *(line for s in measured for line in gpu_summary.scene_lines(s))])
    print("\n" + summary, flush=True)
    (run / "summary.txt").write_text(summary + "\n")
    results = {"gpu": gpu_name, "image": image_path.name,
               "scenes": [{"scene": s.name, "weights": s.facts.source, "imgsz": s.facts.imgsz,
                           "ultralytics": s.ultralytics, "raw": s.raw, "fused_in_process": s.fused,
                           "served": [asdict(r) for r in s.levels], "check": s.check} for s in measured]}
    (run / "results.json").write_text(json.dumps(results, indent=1))
    write_meta(run, "bench-gpu", {"summary": str(run / "summary.txt")})
    print(f"\nbench-gpu: results in {shown(run)}")
    return 0  # a missed target is reported above, not an error of the tool


if __name__ == "__main__":
    sys.exit(main())
