"""CPU throughput benchmark: is Triton's glue negligible next to the model itself?

    python perf/bench_cpu.py [--weights W] [--imgsz N] [--image bus.jpg] [--seconds 10]

Measures, in one run on this machine and on the same image:
  (a) the raw ONNX model in ONNX Runtime (same session options as the served detector):
      batch-1 latency, and throughput at the best batch size;
  (b) the served ensemble end to end at concurrency 1 (gRPC client latency);
  (c) the served ensemble at saturation (many requests in flight, several images per request);
  (d) Ultralytics' own predict pipeline with the same ONNX model.
Served figures are taken twice: with the pixels in system shared memory (a client on the
server's host; the ratios use these) and inside the gRPC message (a remote client).
Ends with `latency_ratio=<served c1 / raw>` and `throughput_ratio=<served / raw>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from yolo_triton import geometry, repository, spec
from yolo_triton.client import OUTPUTS, DetectorClient, ShmRegion, build_inputs
from yolo_triton.ort_session import make_session
from yolo_triton.server import Server

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 2, 4, 8, 16)


def _median_ms(fn, seconds: float, min_runs: int = 5) -> float:  # noqa: ANN001
    fn()  # warm
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_runs:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def raw_model(onnx: Path, image: np.ndarray, size: int, seconds: float) -> tuple[float, dict[int, float]]:
    """(batch-1 latency ms, {batch: images/s}) for ONNX Runtime alone on already-letterboxed input."""
    session = make_session(onnx)
    canvas, _ = geometry.letterbox(image, size)
    one = geometry.to_pixels(canvas[None])
    lat = _median_ms(lambda: session.run([spec.RAW.name], {spec.PIXELS.name: one}), seconds)
    rates = {}
    for b in BATCHES:
        x = np.repeat(one, b, axis=0)
        ms = _median_ms(lambda x=x: session.run([spec.RAW.name], {spec.PIXELS.name: x}), seconds / 2, 3)
        rates[b] = b / ms * 1e3
        print(f"  raw batch {b:>2}: {ms:8.2f} ms  {rates[b]:7.1f} img/s", flush=True)
    return lat, rates


def served_latency(url: str, image: np.ndarray, seconds: float, shared_memory: bool) -> float:
    with DetectorClient(url, timeout_s=60, shared_memory=shared_memory) as c:
        return _median_ms(lambda: c.detect(image), seconds)


def served_throughput(
    url: str, image: np.ndarray, per_request: int, in_flight: int, seconds: float, shared_memory: bool
) -> float:
    """Images/s with `in_flight` async requests of `per_request` images kept outstanding.

    With shared memory every request reads the same registered region (the same images)."""
    with DetectorClient(url, timeout_s=120) as c:
        batch = np.repeat(image[None], per_request, axis=0)
        region = ShmRegion.create(c.client, batch.nbytes) if shared_memory else None
        inputs = build_inputs(batch, image_input=region.input(batch) if region else None)
        done = threading.Semaphore(0)
        errors: list[Exception] = []
        stop_at = [0.0]
        count = [0]

        def callback(result, error) -> None:  # noqa: ANN001
            if error is not None:
                errors.append(error)
            else:
                count[0] += per_request
            done.release()

        def send() -> None:
            c.client.async_infer(c.model, inputs, callback, outputs=OUTPUTS, client_timeout=120)

        for _ in range(in_flight):  # warm up the batcher and every instance
            send()
        for _ in range(in_flight):
            done.acquire()
        count[0] = 0
        start = time.perf_counter()
        stop_at[0] = start + seconds
        for _ in range(in_flight):
            send()
        sent = in_flight
        while True:
            done.acquire()
            if time.perf_counter() >= stop_at[0]:
                break
            send()
            sent += 1
        elapsed = time.perf_counter() - start
        for _ in range(in_flight - 1):
            done.acquire()
        if region:
            region.release(c.client)
        if errors:
            raise RuntimeError(f"{len(errors)} failed requests: {errors[0]}")
        return count[0] / elapsed


def ultralytics_predict(onnx: Path, image: np.ndarray, size: int, seconds: float) -> tuple[float, float]:
    """(latency ms, images/s over batches of 8) for YOLO(model.onnx).predict."""
    from ultralytics import YOLO

    model = YOLO(str(onnx), task="detect")
    predict = lambda ims: model.predict(ims, imgsz=size, rect=False, verbose=False)  # noqa: E731
    lat = _median_ms(lambda: predict(image), seconds)
    ms8 = _median_ms(lambda: predict([image] * 8), seconds / 2, 3)
    return lat, 8 / ms8 * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None,
                    help="build a fresh repository from this checkpoint (default: use model_repository)")
    ap.add_argument("--imgsz", type=int, default=None)
    ap.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    ap.add_argument("--image", type=Path, default=ROOT / "assets" / "samples" / "bus.jpg")
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    ap.add_argument("--per-request", type=int, default=4, help="images per request at saturation")
    ap.add_argument("--in-flight", type=int, default=4, help="requests outstanding at saturation")
    args = ap.parse_args(argv)

    repo = args.repo
    if args.weights:
        sys.path.insert(0, str(ROOT / "build"))
        import build_engines

        repo = ROOT / "runs" / "bench-cpu" / "repo"
        extra = ["--imgsz", str(args.imgsz)] if args.imgsz else []
        if build_engines.main(["--weights", args.weights, "--repo", str(repo), *extra]):
            return 2
    facts = repository.read_facts(repo)
    onnx = repo / spec.variant("ort").detector / "1" / "model.onnx"
    image = cv2.imread(str(args.image))
    if image is None:
        print(f"bench-cpu: cannot read {args.image}", file=sys.stderr)
        return 2
    h, w = image.shape[:2]
    print(f"bench-cpu: {facts.source}, imgsz {facts.imgsz}, image {args.image.name} {w}x{h}", flush=True)

    print("(a) raw ONNX Runtime model", flush=True)
    raw_lat, raw_rates = raw_model(onnx, image, facts.imgsz, args.seconds)
    best_b = max(raw_rates, key=raw_rates.get)

    print("(d) Ultralytics predict, same ONNX model", flush=True)
    ul_lat, ul_rate = ultralytics_predict(onnx, image, facts.imgsz, args.seconds)

    with Server(repo, log=ROOT / "runs" / "bench-cpu" / "tritonserver.log", only=["ort"]) as server:
        print(f"(b) served ensemble ({server.plan.alias.ensemble}), concurrency 1, pixels in the gRPC message",
              flush=True)
        grpc_lat = served_latency(server.url, image, args.seconds, shared_memory=False)
        print("(b) served ensemble, concurrency 1, pixels in system shared memory", flush=True)
        served_lat = served_latency(server.url, image, args.seconds, shared_memory=True)
        print(f"(c) served ensemble at saturation ({args.in_flight} requests x {args.per_request} images in flight, "
              "shared memory)", flush=True)
        served_rate = served_throughput(server.url, image, args.per_request, args.in_flight, args.seconds, True)
        grpc_rate = served_throughput(server.url, image, args.per_request, args.in_flight, args.seconds, False)

    print()
    print(f"{'':<44}{'latency ms':>12}{'img/s':>10}")
    label = f"(a) raw ONNX Runtime (batch 1 / best batch {best_b})"
    print(f"{label:<44}{raw_lat:>12.2f}{raw_rates[best_b]:>10.1f}")
    print(f"{'(b,c) served, shared memory (c1 / saturated)':<44}{served_lat:>12.2f}{served_rate:>10.1f}")
    print(f"{'(b,c) served, pixels over gRPC (c1 / saturated)':<44}{grpc_lat:>12.2f}{grpc_rate:>10.1f}")
    print(f"{'(d) Ultralytics predict (1 image / batch 8)':<44}{ul_lat:>12.2f}{ul_rate:>10.1f}")
    print()
    print(f"served vs Ultralytics: latency {ul_lat / served_lat:.2f}x faster, throughput {served_rate / ul_rate:.2f}x")
    print(f"latency_ratio={served_lat / raw_lat:.3f}")
    print(f"throughput_ratio={served_rate / raw_rates[best_b]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
