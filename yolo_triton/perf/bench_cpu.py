"""CPU benchmark: FP32 and INT8, raw and served, against Ultralytics' predict, in one run.

    yolo-triton bench-cpu [--weights W [--imgsz N]] [--scenes demo,crowded] [--image bus.jpg] [--seconds 16]

Measures, in one run on this machine and on the same image, for each scene:
  (a) the raw ONNX models in ONNX Runtime, FP32 and INT8 (same session options as the served
      detectors): batch-1 latency, and throughput at the best batch size (found first, on FP32);
  (b) every served CPU variant end to end at concurrency 1 (gRPC client latency): the staged
      ensembles `yolov8n_ort`, `yolov8n_ort_int8` and the fused `yolov8n_ort_fused`,
      `yolov8n_ort_int8_fused` (one python model);
  (c) each at saturation: requests of 8 images, or of the raw model's best batch size if that is
      larger, two in flight so one waits while the other runs (--per-request, --in-flight);
  (d) Ultralytics' own predict pipeline with the same FP32 ONNX model (ONNX Runtime);
  (remote client) c1 over gRPC without shared memory: the file's own bytes (IMAGE_BYTES) against
      its pixels (IMAGE), with their ratio (perf.remote).
Scenes: `demo`, the repository (or --weights) with its own checkpoint; `crowded`, the
crowded-scene checkpoint (yolo_triton.data.crowded) at 640, whose ~190 boxes per image give NMS a
crowded scene's work. Each scene prints the detections per image.
Served figures use the pixels in system shared memory (a client on the server's host);
--grpc-pixels adds them inside the gRPC message (a remote client).
On two shared cores one figure drifts by 10-20% from minute to minute, so every figure is
measured in each of --rounds interleaved rounds and the medians are pooled: a drift hits all
figures alike instead of whichever happened to run during it.
Each variant's overhead is printed against its own raw runtime (FP32 or INT8). Each scene ends
with `speedup_vs_ultralytics=<Ultralytics c1 / best served c1 that passes the gate>`,
`latency_ratio=<served c1 / raw>` and `throughput_ratio=<served / raw>`, the ratios for that
fastest gated variant against its own runtime.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.data import crowded
from yolo_triton.paths import DEFAULT_REPO, RUNS, SAMPLES
from yolo_triton.perf.remote import remote_client
from yolo_triton.perf.saturation import saturate
from yolo_triton.perf.target import build_repo, reported
from yolo_triton.perf.timing import samples_ms
from yolo_triton.pipeline import geometry
from yolo_triton.pipeline.ort_session import make_session
from yolo_triton.repository import configs as repository
from yolo_triton.repository import gate
from yolo_triton.serve.launcher import Server

BATCHES = (1, 2, 4, 8, 16)
# Images per request at saturation, at least: an offline client batches its images. With ONNX
# Runtime's workers spinning, batch 1 runs within noise of batch 16 on two cores, and a sweep that
# happened to rank batch 1 first once had the server offered single images (its batcher then
# built batches of two at most, and the served figure measured request overhead, not throughput).
MIN_PER_REQUEST = 8


def raw_batch_rates(run, one: np.ndarray, seconds: float) -> dict[int, float]:  # noqa: ANN001
    """{batch: images/s} for ONNX Runtime alone on already-letterboxed input: finds the best batch."""
    rates = {}
    for b in BATCHES:
        x = np.repeat(one, b, axis=0)
        run(x)  # warm
        ms = statistics.median(samples_ms(lambda x=x: run(x), seconds / len(BATCHES)))
        rates[b] = b / ms * 1e3
        print(f"  raw batch {b:>2}: {ms:8.2f} ms  {rates[b]:7.1f} img/s", flush=True)
    return rates


def served_throughput(url: str, image: np.ndarray, per_request: int, in_flight: int, seconds: float,
                      shared_memory: bool, model: str = spec.ALIAS) -> float:
    """Images/s with `in_flight` async requests of `per_request` copies of the image outstanding.

    With shared memory every request reads the same registered region (the same images)."""
    rate = saturate(url, [np.repeat(image[None], per_request, axis=0)], in_flight, seconds, model, shared_memory)
    if rate.errors:
        raise RuntimeError(f"{rate.errors} failed requests: {rate.first_error}")
    return rate.images_per_s


def _pooled(rounds: list[dict[str, list[float]]]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for r in rounds:
        for k, v in r.items():
            out.setdefault(k, []).extend(v)
    return {k: statistics.median(v) for k, v in out.items()}


OWN_SERVER_WHY = ("its ratios compare the served figures with ONNX Runtime and Ultralytics run in this process, "
                  "which only means something when the server shares these cores and hands images over in "
                  "this host's shared memory")

# The CPU runtimes measured, FP32 first (the baseline the others are compared with).
CPU_RUNTIMES = ("ort", "ort_int8")
SCENES = ("demo", "crowded")


def _runtime_of(model: str) -> spec.Runtime:
    return next(v.runtime for v in spec.VARIANTS if v.ensemble == model)


def measure_scene(repo: Path, image: np.ndarray, args: argparse.Namespace) -> dict:
    """Every figure of one scene, in interleaved rounds; returns the pooled medians and context."""
    facts = repository.read_facts(repo)
    onnx = {r: repo / spec.variant(r).detector / "1" / "model.onnx" for r in CPU_RUNTIMES}
    canvas, _ = geometry.letterbox(image, facts.imgsz)
    one = geometry.to_pixels(canvas[None])
    sessions = {r: make_session(onnx[r]) for r in CPU_RUNTIMES if onnx[r].exists()}
    runs = {r: (lambda x, s=s: s.run([spec.RAW.name], {spec.PIXELS.name: x})) for r, s in sessions.items()}
    print("(a) raw ONNX Runtime FP32 model, batch sizes", flush=True)
    raw_rates = raw_batch_rates(runs["ort"], one, args.seconds)
    best_b = max(raw_rates, key=raw_rates.get)
    per_request = args.per_request or max(best_b, MIN_PER_REQUEST)
    print(f"(c) saturation load: requests of {per_request} images, {args.in_flight} in flight", flush=True)
    best = np.repeat(one, best_b, axis=0)
    from ultralytics import YOLO

    ul = YOLO(str(onnx["ort"]), task="detect")
    predict = lambda ims: ul.predict(ims, imgsz=facts.imgsz, rect=False, verbose=False)  # noqa: E731
    predict(image)
    keys = [k for r in runs for k in (r, f"{r}_fused")]
    models = [spec.variant(k).ensemble for k in keys]
    paths = (True, False) if args.grpc_pixels else (True,)
    slot = args.seconds / args.rounds
    lat_rounds, rate_rounds = [], []
    with Server(repo, log=RUNS / "bench-cpu" / "tritonserver.log", only=keys) as server:
        clients = {(m, shm): DetectorClient(server.url, model=m, timeout_s=60, shared_memory=shm)
                   for m in models for shm in paths}
        counts = {m: len(clients[(m, True)].detect(image).detections.scores) for m in models}
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds}: (a) raw, (b) served c1, (c) served saturated, (d) Ultralytics",
                  flush=True)
            lat: dict[str, list[float]] = {}
            rate: dict[str, list[float]] = {}
            for rt, run in runs.items():
                lat[rt] = samples_ms(lambda run=run: run(one), slot)
                rate[rt] = [best_b / ms * 1e3 for ms in samples_ms(lambda run=run: run(best), slot)]
            for (m, shm), c in clients.items():
                lat[f"{m}|{shm}"] = samples_ms(lambda c=c: c.detect(image), slot)
                rate[f"{m}|{shm}"] = [served_throughput(server.url, image, per_request, args.in_flight, slot,
                                                        shm, model=m)]
            lat["ultralytics"] = samples_ms(lambda: predict(image), slot)
            rate["ultralytics"] = [8 / ms * 1e3 for ms in samples_ms(lambda: predict([image] * 8), slot)]
            lat_rounds.append(lat)
            rate_rounds.append(rate)
        for c in clients.values():
            c.close()
        remote = remote_client(server.url, models, args.image, args.seconds, args.rounds)
        gated = {m: gate.verdict(repo, _runtime_of(m)) for m in models}
    counts["ultralytics"] = len(predict(image)[0].boxes)
    return {"facts": facts, "best_b": best_b, "models": models, "paths": paths, "counts": counts,
            "gated": gated, "lat": _pooled(lat_rounds), "rate": _pooled(rate_rounds), "remote": remote}


def report_scene(name: str, m: dict) -> None:
    """The scene's table, each variant's overhead against its own raw runtime, and the ratio lines."""
    lat_ms, rates = m["lat"], m["rate"]
    print()
    print(f"scene {name}: {m['facts'].source}, imgsz {m['facts'].imgsz}; detections per image: "
          + ", ".join(f"{k} {v}" for k, v in m["counts"].items()))
    print(f"{'':<64}{'latency ms':>12}{'img/s':>10}")
    for rt in (r for r in CPU_RUNTIMES if r in lat_ms):
        precision = spec.variant(rt).runtime.precision.upper()
        label = f"(a) raw ONNX Runtime {precision} (batch 1 / best batch {m['best_b']})"
        print(f"{label:<64}{lat_ms[rt]:>12.2f}{rates[rt]:>10.1f}")
    for model in m["models"]:
        for shm in m["paths"]:
            label = f"(b,c) {model}, {'shared memory' if shm else 'pixels over gRPC'} (c1 / saturated)"
            print(f"{label:<64}{lat_ms[f'{model}|{shm}']:>12.2f}{rates[f'{model}|{shm}']:>10.1f}")
    label = "(d) Ultralytics predict, ONNX Runtime FP32 (1 image / batch 8)"
    print(f"{label:<64}{lat_ms['ultralytics']:>12.2f}{rates['ultralytics']:>10.1f}")
    print("\n".join(m["remote"]))
    print()
    for model in m["models"]:
        k, raw = f"{model}|True", _runtime_of(model).key
        ok, why = m["gated"][model]
        print(f"{model} (shared memory): overhead vs raw {raw}: latency_ratio {lat_ms[k] / lat_ms[raw]:.3f}, "
              f"throughput_ratio {rates[k] / rates[raw]:.3f}; vs Ultralytics: latency "
              f"{lat_ms['ultralytics'] / lat_ms[k]:.2f}x faster, throughput {rates[k] / rates['ultralytics']:.2f}x; "
              f"{'gated' if ok else 'NOT gated'} ({why})")
    passing = [model for model in m["models"] if m["gated"][model][0]]
    fast = min(passing, key=lambda model: lat_ms[f"{model}|True"])
    wide = max(passing, key=lambda model: rates[f"{model}|True"])
    print(f"last three lines ({name}): the fastest served variants that pass the gate, {fast} (latency) and "
          f"{wide} (throughput), image in system shared memory, each against its own raw runtime")
    print(f"speedup_vs_ultralytics={lat_ms['ultralytics'] / lat_ms[f'{fast}|True']:.3f}")
    print(f"latency_ratio={lat_ms[f'{fast}|True'] / lat_ms[_runtime_of(fast).key]:.3f}")
    print(f"throughput_ratio={rates[f'{wide}|True'] / rates[_runtime_of(wide).key]:.3f}")


def scene_repo(scene: str, args: argparse.Namespace) -> Path | None:
    """The repository a scene is measured on (built fresh where the scene names a checkpoint)."""
    if scene == "crowded":
        repo = RUNS / "bench-cpu" / "crowded"
        return repo if build_repo(crowded.NAME, repo, crowded.IMGSZ) else None
    if args.weights:
        repo = RUNS / "bench-cpu" / "repo"
        return repo if build_repo(args.weights, repo, args.imgsz) else None
    if not (args.repo / repository.FACTS_FILE).exists():
        print(f"bench-cpu: no built model in {args.repo}: run `make build-engines` (or `make demo`) first, "
              "or pass --weights", file=sys.stderr)
        return None
    return args.repo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None,
                    help="build a fresh repository from this checkpoint (default: use model_repository)")
    ap.add_argument("--imgsz", type=int, default=None, help="input size of the fresh repository (with --weights)")
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    ap.add_argument("--scenes", default="demo,crowded",
                    help="comma-separated: demo (the repository or --weights), crowded (crowded checkpoint at 640)")
    ap.add_argument("--image", type=Path, default=SAMPLES / "bus.jpg")
    ap.add_argument("--seconds", type=float, default=16.0, help="measuring time per figure (split over the rounds)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds: every figure is measured in each")
    ap.add_argument("--per-request", type=int, default=None,
                    help=f"images per request at saturation (default: the raw model's best batch size, "
                         f"at least {MIN_PER_REQUEST})")
    ap.add_argument("--in-flight", type=int, default=2,
                    help="requests outstanding at saturation (2: one waits while the other runs)")
    ap.add_argument("--grpc-pixels", action="store_true", help="also measure with the pixels inside the gRPC message")
    ap.add_argument("--url", default=None,
                    help=f"not used: {OWN_SERVER_WHY}; given, it is named as ignored and the benchmark runs here")
    args = ap.parse_args(argv)
    if args.url:
        print(f"bench-cpu: --url {args.url} not used: this benchmark starts its own tritonserver on free local "
              f"ports, because {OWN_SERVER_WHY}", flush=True)
    if args.imgsz and not args.weights:
        ap.error("--imgsz needs --weights: a built repository's input size is fixed (rebuild it from a checkpoint)")
    scenes = [s for s in args.scenes.split(",") if s]
    if not scenes or any(s not in SCENES for s in scenes):
        ap.error(f"--scenes {args.scenes!r}: choose from {', '.join(SCENES)}, comma-separated")

    image = cv2.imread(str(args.image))
    if image is None:
        print(f"bench-cpu: cannot read {args.image}", file=sys.stderr)
        return 2
    return reported("bench-cpu", lambda: _measure(scenes, image, args))


def _measure(scenes: list[str], image: np.ndarray, args: argparse.Namespace) -> int:
    h, w = image.shape[:2]
    results = {}
    for scene in scenes:
        repo = scene_repo(scene, args)
        if repo is None:
            return 2
        print(f"bench-cpu: scene {scene}, image {args.image.name} {w}x{h}, {args.rounds} interleaved rounds",
              flush=True)
        results[scene] = measure_scene(repo, image, args)
    for scene, m in results.items():
        report_scene(scene, m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
