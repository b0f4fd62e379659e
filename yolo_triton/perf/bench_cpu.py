"""CPU throughput benchmark: is Triton's glue negligible next to the model itself?

    yolo-triton bench-cpu [--weights W [--imgsz N]] [--image bus.jpg] [--seconds 16]

Measures, in one run on this machine and on the same image:
  (a) the raw ONNX model in ONNX Runtime (same session options as the served detector):
      batch-1 latency, and throughput at the best batch size (found first);
  (b) the served pipeline end to end at concurrency 1 (gRPC client latency), for the staged
      ensemble `yolov8n_ort` and the fused `yolov8n_ort_fused` (one python model);
  (c) both at saturation: requests of 8 images, or of the raw model's best batch size if that is
      larger, two in flight so one waits while the other runs (--per-request, --in-flight);
  (d) Ultralytics' own predict pipeline with the same ONNX model;
  (remote client) c1 over gRPC without shared memory: the file's own bytes (IMAGE_BYTES) against
      its pixels (IMAGE), with their ratio (perf.remote).
Served figures are taken twice: with the pixels in system shared memory (a client on the
server's host; the ratios use these) and inside the gRPC message (a remote client).
On two shared cores one figure drifts by 10-20% from minute to minute, so every figure is
measured in each of --rounds interleaved rounds and the medians are pooled: a drift hits all
figures alike instead of whichever happened to run during it.
Ends with `latency_ratio=<served c1 / raw>` and `throughput_ratio=<served / raw>`, each for
the better served path for that figure (named on the line before): on two cores the fused
model answers one request sooner, while the staged ensemble overlaps one batch's letterbox/NMS
with the next one's network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient
from yolo_triton.paths import DEFAULT_REPO, RUNS, SAMPLES
from yolo_triton.perf.remote import remote_client
from yolo_triton.perf.saturation import saturate
from yolo_triton.perf.target import build_repo
from yolo_triton.pipeline import geometry
from yolo_triton.pipeline.ort_session import make_session
from yolo_triton.repository import configs as repository
from yolo_triton.serve.launcher import Server

BATCHES = (1, 2, 4, 8, 16)
# Images per request at saturation, at least: an offline client batches its images. With ONNX
# Runtime's workers spinning, batch 1 runs within noise of batch 16 on two cores, and a sweep that
# happened to rank batch 1 first once had the server offered single images (its batcher then
# built batches of two at most, and the served figure measured request overhead, not throughput).
MIN_PER_REQUEST = 8


def _samples_ms(fn: Callable[[], object], seconds: float, min_runs: int = 3) -> list[float]:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_runs:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def raw_batch_rates(run, one: np.ndarray, seconds: float) -> dict[int, float]:  # noqa: ANN001
    """{batch: images/s} for ONNX Runtime alone on already-letterboxed input: finds the best batch."""
    rates = {}
    for b in BATCHES:
        x = np.repeat(one, b, axis=0)
        run(x)  # warm
        ms = statistics.median(_samples_ms(lambda x=x: run(x), seconds / len(BATCHES)))
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None,
                    help="build a fresh repository from this checkpoint (default: use model_repository)")
    ap.add_argument("--imgsz", type=int, default=None, help="input size of the fresh repository (with --weights)")
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    ap.add_argument("--image", type=Path, default=SAMPLES / "bus.jpg")
    ap.add_argument("--seconds", type=float, default=16.0, help="measuring time per figure (split over the rounds)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds: every figure is measured in each")
    ap.add_argument("--per-request", type=int, default=None,
                    help=f"images per request at saturation (default: the raw model's best batch size, "
                         f"at least {MIN_PER_REQUEST})")
    ap.add_argument("--in-flight", type=int, default=2,
                    help="requests outstanding at saturation (2: one waits while the other runs)")
    ap.add_argument("--url", default=None,
                    help=f"not used: {OWN_SERVER_WHY}; given, it is named as ignored and the benchmark runs here")
    args = ap.parse_args(argv)
    if args.url:
        print(f"bench-cpu: --url {args.url} not used: this benchmark starts its own tritonserver on free local "
              f"ports, because {OWN_SERVER_WHY}", flush=True)
    if args.imgsz and not args.weights:
        ap.error("--imgsz needs --weights: a built repository's input size is fixed (rebuild it from a checkpoint)")

    repo = args.repo
    if args.weights:
        repo = RUNS / "bench-cpu" / "repo"
        if not build_repo(args.weights, repo, args.imgsz):
            return 2
    facts = repository.read_facts(repo)
    onnx = repo / spec.variant("ort").detector / "1" / "model.onnx"
    image = cv2.imread(str(args.image))
    if image is None:
        print(f"bench-cpu: cannot read {args.image}", file=sys.stderr)
        return 2
    h, w = image.shape[:2]
    print(f"bench-cpu: {facts.source}, imgsz {facts.imgsz}, image {args.image.name} {w}x{h}, "
          f"{args.rounds} interleaved rounds", flush=True)

    print("(a) raw ONNX Runtime model, batch sizes", flush=True)
    session = make_session(onnx)
    canvas, _ = geometry.letterbox(image, facts.imgsz)
    one = geometry.to_pixels(canvas[None])
    run_raw = lambda x: session.run([spec.RAW.name], {spec.PIXELS.name: x})  # noqa: E731
    raw_rates = raw_batch_rates(run_raw, one, args.seconds)
    best_b = max(raw_rates, key=raw_rates.get)
    per_request = args.per_request or max(best_b, MIN_PER_REQUEST)
    print(f"(c) saturation load: requests of {per_request} images, {args.in_flight} in flight", flush=True)
    best = np.repeat(one, best_b, axis=0)
    from ultralytics import YOLO

    ul = YOLO(str(onnx), task="detect")
    predict = lambda ims: ul.predict(ims, imgsz=facts.imgsz, rect=False, verbose=False)  # noqa: E731
    predict(image)
    models = [spec.variant("ort").ensemble, spec.variant("ort_fused").ensemble]
    slot = args.seconds / args.rounds
    lat_rounds, rate_rounds = [], []
    with Server(repo, log=RUNS / "bench-cpu" / "tritonserver.log", only=["ort", "ort_fused"]) as server:
        clients = {(m, shm): DetectorClient(server.url, model=m, timeout_s=60, shared_memory=shm)
                   for m in models for shm in (True, False)}
        for c in clients.values():
            c.detect(image)
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds}: (a) raw, (b) served c1, (c) served saturated, (d) Ultralytics",
                  flush=True)
            lat: dict[str, list[float]] = {"raw": _samples_ms(lambda: run_raw(one), slot)}
            rate = {"raw": [best_b / ms * 1e3 for ms in _samples_ms(lambda: run_raw(best), slot)]}
            for (m, shm), c in clients.items():
                lat[f"{m}|{shm}"] = _samples_ms(lambda c=c: c.detect(image), slot)
                rate[f"{m}|{shm}"] = [served_throughput(server.url, image, per_request, args.in_flight, slot,
                                                        shm, model=m)]
            lat["ultralytics"] = _samples_ms(lambda: predict(image), slot)
            rate["ultralytics"] = [8 / ms * 1e3 for ms in _samples_ms(lambda: predict([image] * 8), slot)]
            lat_rounds.append(lat)
            rate_rounds.append(rate)
        for c in clients.values():
            c.close()
        remote_client(server.url, models, args.image, args.seconds, args.rounds)
    lat_ms, rates = _pooled(lat_rounds), _pooled(rate_rounds)

    print()
    print(f"{'':<58}{'latency ms':>12}{'img/s':>10}")
    print(f"{f'(a) raw ONNX Runtime (batch 1 / best batch {best_b})':<58}{lat_ms['raw']:>12.2f}{rates['raw']:>10.1f}")
    for m in models:
        for shm in (True, False):
            label = f"(b,c) {m}, {'shared memory' if shm else 'pixels over gRPC'} (c1 / saturated)"
            print(f"{label:<58}{lat_ms[f'{m}|{shm}']:>12.2f}{rates[f'{m}|{shm}']:>10.1f}")
    label = "(d) Ultralytics predict (1 image / batch 8)"
    print(f"{label:<58}{lat_ms['ultralytics']:>12.2f}{rates['ultralytics']:>10.1f}")
    print()
    for m in models:
        k = f"{m}|True"
        print(f"{m} (shared memory): latency_ratio {lat_ms[k] / lat_ms['raw']:.3f}, throughput_ratio "
              f"{rates[k] / rates['raw']:.3f}; vs Ultralytics: latency {lat_ms['ultralytics'] / lat_ms[k]:.2f}x "
              f"faster, throughput {rates[k] / rates['ultralytics']:.2f}x")
    fast = min(models, key=lambda m: lat_ms[f"{m}|True"])
    wide = max(models, key=lambda m: rates[f"{m}|True"])
    print(f"last two lines: latency of {fast}, throughput of {wide} (image in system shared memory; each "
          "the better served path for that figure, both served by this server)")
    print(f"latency_ratio={lat_ms[f'{fast}|True'] / lat_ms['raw']:.3f}")
    print(f"throughput_ratio={rates[f'{wide}|True'] / rates['raw']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
