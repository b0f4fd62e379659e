"""Saturated throughput: a closed loop that keeps a fixed number of requests in flight.

The CPU benchmark offers batches of one photo (the offline client's load) and the soak single
photos in turn (the rate it then doubles), but both ask the same question, how much the server
answers per second when it is never idle, so both use this loop.

Only what is answered between the start and the end of the clock counts: requests still in
flight when it stops finish afterwards and must not (they once did in the benchmark, and
overstated the rate by their images). A clock shorter than a request (a quick run on a slow
model) stays open until `in_flight` answers have come, so the rate is never a zero for want of
time; `Rate.seconds` is the clock as it ran. Every request of a batch reads the same tensors, built
once, or the same shared-memory region, so the client spends no time copying during the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from yolo_triton import spec
from yolo_triton.client.detector import OUTPUTS, DetectorClient, ShmRegion, build_inputs


@dataclass(frozen=True)
class Rate:
    in_flight: int
    seconds: float
    requests: int  # answered within the clock
    images: int
    errors: int  # failed requests (any time after the warm-up)
    first_error: str = ""

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def saturate(url: str, batches: Sequence[np.ndarray], in_flight: int, seconds: float, model: str = spec.ALIAS,
             shared_memory: bool = False, warmup_s: float = 0.0, timeout_s: float = 120.0) -> Rate:
    """Keep `in_flight` requests outstanding, cycling through `batches` (B, H, W, 3 each), for
    `seconds` after a warm-up: one request per slot, then `warmup_s` of load that does not count."""
    with DetectorClient(url, model=model, timeout_s=timeout_s) as c:
        regions = [ShmRegion.create(c.client, b.nbytes, c.headers) for b in batches] if shared_memory else []
        requests = [(build_inputs(b, image_input=regions[i].input(b) if regions else None), b.shape[0])
                    for i, b in enumerate(batches)]
        lock, done = threading.Lock(), threading.Semaphore(0)
        clock = [float("inf"), float("inf")]  # the counted interval [start, stop)
        tally = {"requests": 0, "images": 0, "errors": 0}
        first_error: list[str] = []
        turn = [0]

        def send() -> None:
            inputs, n = requests[turn[0] % len(requests)]
            turn[0] += 1

            def callback(result, error, n: int = n) -> None:  # noqa: ANN001 - tritonclient's callback
                t = time.perf_counter()
                with lock:
                    if error is not None:
                        tally["errors"] += 1
                        first_error[:] = first_error or [str(error)]
                    elif clock[0] <= t < clock[1] or (clock[0] <= t and tally["requests"] < in_flight):
                        clock[1] = max(clock[1], t)  # a clock too short for `in_flight` answers grows to the last
                        tally["requests"] += 1
                        tally["images"] += n
                done.release()

            c.client.async_infer(c.model, inputs, callback, outputs=OUTPUTS, client_timeout=timeout_s)

        try:
            for _ in range(in_flight):  # warm up the batcher and every instance
                send()
            for _ in range(in_flight):
                done.acquire()
            with lock:
                tally["errors"], first_error[:] = 0, []
                clock[0] = time.perf_counter() + warmup_s
                clock[1] = clock[0] + seconds
            for _ in range(in_flight):
                send()
            while True:
                done.acquire()
                with lock:
                    enough = tally["requests"] >= in_flight or tally["errors"] > 0  # failing never gets enough
                    over = time.perf_counter() >= clock[1] and enough
                if over:
                    break
                send()
            for _ in range(in_flight - 1):
                done.acquire()
        finally:
            for region in regions:
                region.release(c.client)
        return Rate(in_flight, clock[1] - clock[0], tally["requests"], tally["images"], tally["errors"],
                    first_error[0] if first_error else "")
