"""N tritonserver replicas of one model repository on loopback, one of them killed and restarted.

Each replica is a `Server` of the launcher with its own free ports, admin key and log, serving
the same repository (what N pods mounting one volume do). They load at once (`launch` each, then
`ready` each). `kill` is a crash, not a drain: SIGKILL to the replica's process group
(tritonserver and its python stubs), so what clients see is what a lost pod gives them.
`restart` starts it again on the same ports, the balancer's and Prometheus' targets.

Triton's statistics are cumulative per process and die with it, so the set keeps them per
incarnation: a snapshot when the load starts (or zero for a fresh incarnation), and the last one
before the replica is killed or at the end (`QueueTally`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from yolo_triton import spec
from yolo_triton.perf import stats
from yolo_triton.serve.install import find_triton, gpu_available
from yolo_triton.serve.launcher import Ports, Server, plan_models


def served_variant(repo: Path) -> spec.Variant:
    """The variant `yolov8n` points to on this machine: every replica loads that one alone."""
    plan = plan_models(repo, find_triton().backends, gpu_available())
    assert plan.alias is not None  # plan_models raises LaunchError when nothing can be served
    return plan.alias


def triton_statistics(url: str) -> dict[str, dict]:
    """stats.snapshot of the server at `url` (gRPC)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        return stats.snapshot(client.get_inference_statistics(as_json=True, client_timeout=10))
    finally:
        client.close()


def queued(snapshot: dict[str, dict]) -> tuple[float, int]:
    """(queue microseconds, answered requests) summed over spec.QUEUED_MODELS, the models the
    autoscaling rule reads (yolo_triton.perf.prometheus.queue_per_request)."""
    models = [m for m in snapshot if re.fullmatch(spec.QUEUED_MODELS, m)]
    return sum(snapshot[m]["queue"] for m in models) / 1e3, sum(snapshot[m]["count"] for m in models)


@dataclass
class QueueTally:
    """Queue time and requests of every incarnation of every replica between its two snapshots."""

    queue_us: float = 0.0
    requests: int = 0
    incarnations: list[dict] = field(default_factory=list)

    def add(self, replica: int, before: dict[str, dict], after: dict[str, dict]) -> None:
        (q0, n0), (q1, n1) = queued(before), queued(after)
        self.queue_us += q1 - q0
        self.requests += n1 - n0
        self.incarnations.append({"replica": replica, "requests": n1 - n0, "queue_us": q1 - q0})

    @property
    def per_request(self) -> float:
        return self.queue_us / self.requests if self.requests else float("nan")


class Replicas:
    """The replica set: start, kill one, restart it, account for Triton's statistics, stop all."""

    def __init__(self, repo: Path, count: int, logs: Path, variant: spec.Variant) -> None:
        self.repo, self.logs, self.only = repo, logs, [variant.key]
        self.ports = [Ports.free() for _ in range(count)]
        self.servers: list[Server | None] = [None] * count
        self.baseline: list[dict[str, dict]] = [{} for _ in range(count)]
        self.tally = QueueTally()
        self.pids: list[int] = []  # every tritonserver started, for the caller's record

    def _server(self, i: int) -> Server:
        log = self.logs / f"replica{i}.log"
        return Server(self.repo, ports=self.ports[i], log=log, only=self.only)

    def start(self, timeout: float = 300.0) -> None:
        for i in range(len(self.ports)):
            self.servers[i] = self._server(i).launch()
            self.pids.append(self.servers[i].proc.pid)
        for s in self.servers:
            s.ready(timeout)

    @property
    def urls(self) -> list[str]:
        return [f"127.0.0.1:{p.grpc}" for p in self.ports]

    @property
    def metrics_targets(self) -> list[str]:
        return [f"127.0.0.1:{p.metrics}" for p in self.ports]

    def mark(self) -> None:
        """The load starts now: every replica's statistics so far are not part of it."""
        self.baseline = [triton_statistics(s.url) if s else {} for s in self.servers]

    def kill(self, i: int) -> None:
        """Crash replica i (SIGKILL to tritonserver and its stubs), after its last statistics."""
        server = self.servers[i]
        if server is None or server.proc is None:
            return
        with contextlib.suppress(Exception):  # a replica that cannot answer has lost its figures
            self.tally.add(i, self.baseline[i], triton_statistics(server.url))
        if server.watchdog is not None:
            server.watchdog.scan()  # learn its stubs' shared-memory regions while they exist
            server.watchdog.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        if server.watchdog is not None:
            server.watchdog.unlink_regions()
        server.stop()  # the process is gone: this closes its log and removes its key files
        self.servers[i], self.baseline[i] = None, {}

    def restart(self, i: int, timeout: float = 300.0) -> None:
        """Replica i again, same ports; its fresh statistics count from zero."""
        server = self._server(i).launch()
        self.pids.append(server.proc.pid)
        self.servers[i] = server
        server.ready(timeout)

    def finish(self) -> QueueTally:
        """The load is over: add every live replica's statistics since its baseline."""
        for i, s in enumerate(self.servers):
            if s is not None:
                self.tally.add(i, self.baseline[i], triton_statistics(s.url))
        return self.tally

    def stop(self) -> None:
        for i, s in enumerate(self.servers):
            if s is not None:
                s.stop()
                self.servers[i] = None
