"""The "remote client" level of the benchmarks: c1 over gRPC, no shared memory, encoded vs pixels.

A client on another host cannot use shared memory; what it can choose is what travels: the file's
own bytes (IMAGE_BYTES, decoded on the server) or its decoded pixels (IMAGE). Both are measured
here in interleaved rounds on the same photo, and the ratio printed, so a drift of a shared
machine hits both alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from yolo_triton.client import images
from yolo_triton.client.detector import DetectorClient
from yolo_triton.perf.timing import samples_ms


def remote_client(url: str, models: Sequence[str], photo: Path, seconds: float, rounds: int) -> list[str]:
    """The remote-client table: c1 median latency per model, encoded and as pixels, and their ratio.

    Returned as lines, so a benchmark prints it beside the rest of its scene."""
    data = photo.read_bytes()
    pixels = images.decode(data, str(photo))
    samples: dict[str, list[float]] = {}
    clients = {m: DetectorClient(url, model=m, timeout_s=60) for m in models}
    try:
        for c in clients.values():
            c.detect_encoded(data), c.detect(pixels)  # warm both paths
        slot = seconds / rounds / (2 * len(models))
        for _ in range(rounds):
            for m, c in clients.items():
                samples.setdefault(f"{m}|encoded", []).extend(samples_ms(lambda c=c: c.detect_encoded(data), slot))
                samples.setdefault(f"{m}|pixels", []).extend(samples_ms(lambda c=c: c.detect(pixels), slot))
    finally:
        for c in clients.values():
            c.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    h, w = pixels.shape[:2]
    lines = [f"(remote client) c1 over gRPC, no shared memory, {photo.name} {w}x{h}: {len(data)} bytes encoded, "
             f"{pixels.nbytes} bytes of pixels"]
    for m in models:
        enc, pix = med[f"{m}|encoded"], med[f"{m}|pixels"]
        lines.append(f"  {m}: encoded {enc:.2f} ms, pixels {pix:.2f} ms, encoded_vs_pixels_c1={enc / pix:.3f}")
    return lines
