"""Per-stage time inside the fused python models, from their Triton custom metrics.

A fused variant is one python model (`pipeline_ort`, `pipeline_gpu`), so Triton's statistics
give it one compute figure where a staged ensemble has three models. The pipeline models count
what they spend in each stage (yolo_triton.spec: STAGE_DURATION_METRIC, STAGE_EXECUTIONS_METRIC,
STAGE_IMAGES_METRIC) and Triton publishes the counters as Prometheus text on its metrics port.
Like Triton's statistics they are cumulative, so a measurement reads them before and after and
takes the difference (`diff`, as `stats.diff` does). The models add up their stages in the stub
and publish the sums at most once a second, on the execute path, so the last second of a run is
published by the next execution; `behind` tells when that is still to come (yolo_triton.perf.probe
sends one request then).

A server whose models publish nothing (an older model repository, metrics off, an unreachable
port) gives empty snapshots, and the tools fall back to what Triton's statistics alone show.
"""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from yolo_triton import spec

DEFAULT_PORT = 8002
# Triton's own count of a model's executions, on the same page: exact, where ours lag it by what
# the model has not published yet.
TRITON_EXECUTIONS = "nv_inference_exec_count"
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in Prometheus' text format; comments and lines
    that are not samples are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels_text, value = m.groups()
        labels, pos = {}, 0
        while labels_text and pos < len(labels_text):
            lm = _LABEL.match(labels_text, pos)
            if lm is None:
                break
            labels[lm.group(1)] = re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group(0)], lm.group(2))
            pos = lm.end()
        try:
            number = float(value)
        except ValueError:
            continue
        out.append((name, labels, number))
    return out


@dataclass
class Counters:
    """One model's counters at one moment."""

    executions: float = 0.0
    images: float = 0.0
    stage_us: dict[str, float] = field(default_factory=dict)
    triton_executions: float = 0.0

    @property
    def behind(self) -> bool:
        """Executions Triton counted that the model has not published yet."""
        return self.executions < self.triton_executions


def snapshot(text: str) -> dict[str, Counters]:
    """{model: Counters} for every model that published a stage duration."""
    samples = parse(text)
    out: dict[str, Counters] = {}
    for name, labels, value in samples:
        if name == spec.STAGE_DURATION_METRIC and labels.get("stage") in spec.STAGES and "model" in labels:
            c = out.setdefault(labels["model"], Counters())
            c.stage_us[labels["stage"]] = c.stage_us.get(labels["stage"], 0.0) + value
    for name, labels, value in samples:
        c = out.get(labels.get("model", ""))
        if c is None or math.isnan(value):
            continue
        if name == spec.STAGE_EXECUTIONS_METRIC:
            c.executions += value
        elif name == spec.STAGE_IMAGES_METRIC:
            c.images += value
        elif name == TRITON_EXECUTIONS:
            c.triton_executions += value
    return out


@dataclass(frozen=True)
class StageSplit:
    """What one model's stages spent between two snapshots."""

    model: str
    executions: int
    images: int
    us: dict[str, float]  # summed over the executions, by stage

    @property
    def ms(self) -> dict[str, float]:
        """Mean ms per execution, by stage: what each request of that execution waited for the
        stage, the unit of Triton's compute figures per request."""
        return {s: self.us.get(s, 0.0) / self.executions / 1e3 for s in spec.STAGES}

    @property
    def ms_per_image(self) -> dict[str, float]:
        return {s: self.us.get(s, 0.0) / self.images / 1e3 if self.images else 0.0 for s in spec.STAGES}


def diff(before: dict[str, Counters], after: dict[str, Counters],
         models: Sequence[str] | None = None) -> dict[str, StageSplit]:
    """Per-model stage time between two snapshots, for `models` (None: every model)."""
    out = {}
    for name in sorted(after) if models is None else models:
        a, b = after.get(name), before.get(name, Counters())
        if a is None:
            continue
        executions = int(round(a.executions - b.executions))
        if executions <= 0:
            continue
        us = {s: a.stage_us.get(s, 0.0) - b.stage_us.get(s, 0.0) for s in spec.STAGES}
        out[name] = StageSplit(name, executions, int(round(a.images - b.images)), us)
    return out


def endpoint(address: str) -> str:
    """http://HOST:PORT/metrics from HOST:PORT, a bare host (port 8002) or a full URL."""
    if "://" in address:
        return address if urllib.parse.urlparse(address).path not in ("", "/") else address.rstrip("/") + "/metrics"
    if ":" not in address.rsplit("]", 1)[-1]:
        address = f"{address}:{DEFAULT_PORT}"
    return f"http://{address}/metrics"


def for_grpc(url: str, port: int = DEFAULT_PORT) -> str:
    """The metrics endpoint of the server whose gRPC endpoint is `url` (same host)."""
    return endpoint(f"{url.rsplit(':', 1)[0]}:{port}")


def fetch(url: str, timeout_s: float = 5.0) -> str:
    """The metrics page, or "" when it cannot be read (the tools then fall back)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return ""


def read(url: str | None) -> dict[str, Counters]:
    """A snapshot of the server at `url`; {} without a url or when nothing can be read."""
    return snapshot(fetch(url)) if url else {}
