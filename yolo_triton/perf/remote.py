"""The "remote client" level of the benchmarks: c1 over gRPC, no shared memory, encoded vs pixels.

A client on another host cannot use shared memory; what it can choose is what travels: the file's
own bytes (IMAGE_BYTES, decoded on the server) or its decoded pixels (IMAGE). Measured here in
interleaved rounds on the same photo, so a drift of a shared machine hits all alike:
  - encoded: the file's bytes, as `--transport encoded` (and `auto` for a remote server) sends them;
  - pixels from the file: the client decodes the file, then sends its pixels (`--transport
    pixels`): the same decode on the other side of the wire, so this ratio is the user's choice
    for a file, and the wire's cost alone;
  - pixels already decoded: a frame the client holds as pixels (a camera's), sent as they are.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from yolo_triton.client import images
from yolo_triton.client.detector import DetectorClient
from yolo_triton.perf.timing import samples_ms


def remote_client(url: str, models: Sequence[str], photo: Path, seconds: float, rounds: int) -> list[str]:
    """The remote-client table: c1 median latency per model, encoded, as pixels decoded from the
    file by the client, and as pixels already decoded; the ratios of encoded to each.

    Returned as lines, so a benchmark prints it beside the rest of its scene."""
    data = photo.read_bytes()
    pixels = images.decode(data, str(photo))
    samples: dict[str, list[float]] = {}
    clients = {m: DetectorClient(url, model=m, timeout_s=60) for m in models}
    paths = {
        "encoded": lambda c: c.detect_encoded(data),
        "file_pixels": lambda c: c.detect(images.decode(data, str(photo))),
        "pixels": lambda c: c.detect(pixels),
    }
    try:
        for c in clients.values():
            for send in paths.values():
                send(c)  # warm every path
        # Each model gets `seconds` in all, split over its paths and rounds: at 640 on two cores a
        # request takes ~80 ms, and a smaller share left a dozen samples per path (±10% noise).
        slot = seconds / rounds / len(paths)
        for _ in range(rounds):
            for m, c in clients.items():
                for path, send in paths.items():
                    samples.setdefault(f"{m}|{path}", []).extend(samples_ms(lambda c=c, send=send: send(c), slot))
    finally:
        for c in clients.values():
            c.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    h, w = pixels.shape[:2]
    lines = [f"(remote client) c1 over gRPC, no shared memory, {photo.name} {w}x{h}: {len(data)} bytes encoded, "
             f"{pixels.nbytes} bytes of pixels; from the file: the client decodes it to send pixels"]
    for m in models:
        enc, file_pix, pix = (med[f"{m}|{p}"] for p in paths)
        lines.append(f"  {m}: encoded {enc:.2f} ms, pixels from the file {file_pix:.2f} ms, pixels already decoded "
                     f"{pix:.2f} ms; encoded_vs_file_pixels_c1={enc / file_pix:.3f}, "
                     f"encoded_vs_pixels_c1={enc / pix:.3f}")
    return lines
