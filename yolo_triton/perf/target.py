"""The server a tool measures: the one at --url, or one started here on free ports.

Every tool takes the same options for it (add_target_args), describes it the same way in its
run record (server_info), and ends on the same errors with exit 2 (reported), so a perf sweep,
a Locust run and the comparison can be pointed at a deployment or run alone on a fresh clone.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient, ServerError
from yolo_triton.paths import DEFAULT_REPO, RUNS
from yolo_triton.perf import metrics
from yolo_triton.perf.errors import PerfToolError
from yolo_triton.perf.inputs import Sample
from yolo_triton.pipeline.validation import InputError
from yolo_triton.serve.launcher import LaunchError, running

# What ends a measurement with its message and exit 2: the server, the request or the set-up.
TOOL_ERRORS = (LaunchError, PerfToolError, ServerError, InputError)


def reported(tool: str, body: Callable[[], int]) -> int:
    """Run a tool's body; an error of TOOL_ERRORS ends it with exit 2 and its message."""
    try:
        return body()
    except TOOL_ERRORS as e:
        print(f"{tool}: {e}", file=sys.stderr)
        return 2


def add_target_args(ap: argparse.ArgumentParser, kind: str, quick: str | None, stage_metrics: bool = True) -> None:
    """The options every measurement tool shares: what to measure against and where results go.

    `quick` is the help text of --quick (None: the tool has no quick mode); `stage_metrics`: the
    tool reads the fused models' stage metrics, so it takes --metrics-url."""
    ap.add_argument("--images", nargs="+", default=[], help="image files/folders (default: the samples)")
    ap.add_argument("--url", help="HOST:PORT of a running server (gRPC); default: start one here")
    if stage_metrics:
        ap.add_argument("--metrics-url",
                        help=f"HOST:PORT (or URL) of the --url server's metrics endpoint, for the fused models' "
                             f"stage times (default: the --url host, port {metrics.DEFAULT_PORT})")
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository when starting a server")
    ap.add_argument("--runs-dir", type=Path, default=RUNS, help=f"results go to RUNS_DIR/{kind}/<timestamp>/")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)


@dataclass(frozen=True)
class Target:
    """The server a tool measures; `skipped` says why other variants are absent, when known."""

    url: str
    skipped: dict[str, str] = field(default_factory=dict)
    metrics_url: str = ""  # http://HOST:PORT/metrics
    pid: int | None = None  # tritonserver's process, when started here


@contextlib.contextmanager
def target(url: str | None, repo: Path = DEFAULT_REPO, log: Path | None = None, tool: str = "perf",
           metrics_url: str | None = None) -> Iterator[Target]:
    """The server to measure: the one at `url`, else one started here for the duration."""
    if not url:
        print(f"{tool}: starting tritonserver on free ports (repository {repo}; log {log})", flush=True)
    with running(url, repo=repo, log=log) as server:
        if server is None:
            yield Target(str(url), {}, metrics.endpoint(metrics_url) if metrics_url else metrics.for_grpc(str(url)))
            return
        print(f"{tool}: tritonserver ready on {server.url} ({', '.join(server.plan.load)})", flush=True)
        for name, why in server.plan.skipped.items():
            print(f"{tool}: not served here: {name}: {why}", flush=True)
        yield Target(server.url, dict(server.plan.skipped), metrics.for_grpc(server.url, server.ports.metrics),
                     server.proc.pid if server.proc else None)


def server_info(tgt: Target) -> dict:
    """What the measured server is: its version, the loaded ensembles, what `yolov8n` points at,
    and the variants it does not serve with the reason."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(tgt.url)
    try:
        try:
            meta = client.get_server_metadata(as_json=True, client_timeout=30)
        except Exception as e:  # noqa: BLE001 - tritonclient raises its own type; the message is what matters
            raise PerfToolError(f"cannot reach tritonserver at {tgt.url}: {str(e).splitlines()[0][:200]}") from None
        variants = loaded_variants(tgt.url)
        skipped = {v.ensemble: tgt.skipped.get(v.ensemble, "not loaded on that server")
                   for v in spec.VARIANTS if v.ensemble not in variants}
        info: dict = {"url": tgt.url, "tritonserver": meta.get("version", "unknown"), "variants": variants,
                      "skipped": skipped, "metrics_url": tgt.metrics_url}
        with contextlib.suppress(Exception):
            cfg = client.get_model_config(spec.ALIAS, as_json=True, client_timeout=30)["config"]
            info["alias"] = f"{spec.ALIAS}_" + cfg["parameters"]["variant"]["string_value"]
        return info
    finally:
        client.close()


def loaded_variants(url: str) -> list[str]:
    """Ensembles of spec.VARIANTS that the server has READY, in spec order.

    Asked model by model through the health API, which is open: the repository index needs the
    server's admin key."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return [v.ensemble for v in spec.VARIANTS if client.is_model_ready(v.ensemble, client_timeout=30)]
    except Exception as e:  # noqa: BLE001 - tritonclient raises its own type; the message is what matters
        raise PerfToolError(f"cannot reach tritonserver at {url}: {str(e).splitlines()[0][:200]}") from None
    finally:
        client.close()


def variant_of(model: str, alias_target: str | None = None) -> spec.Variant | None:
    """The variant an ensemble runs; `yolov8n` runs the one `alias_target` names."""
    name = alias_target if model == spec.ALIAS and alias_target else model
    return next((v for v in spec.VARIANTS if v.ensemble == name), None)


def choose(server: dict, asked: str | None) -> list[str]:
    """The ensembles to measure: the comma-separated `asked`, else every variant loaded."""
    loaded = [*server["variants"], spec.ALIAS]
    models = [m for m in (asked.split(",") if asked else server["variants"]) if m]
    unknown = [m for m in models if m not in loaded]
    if unknown or not models:
        raise PerfToolError(f"not loaded on {server['url']}: {', '.join(unknown) or '(none)'}; "
                            f"loaded: {', '.join(loaded)}")
    return models


def warm_up(url: str, model: str, samples: Sequence[Sample], passes: int = 1) -> None:
    """Requests of every photo shape first, so first-call costs (session init, allocations) stay out."""
    with DetectorClient(url, model=model, timeout_s=120) as c:
        for _ in range(passes):
            for s in samples:
                c.detect(s.image)


def build_repo(weights: str, repo: Path, imgsz: int | None = None) -> bool:
    """Export a fresh model repository from a checkpoint for a benchmark's own server (as
    `yolo-triton build` does); False when the build failed (it says why)."""
    from yolo_triton.repository import build

    extra = ["--imgsz", str(imgsz)] if imgsz else []
    return build.main(["--weights", weights, "--repo", str(repo), *extra]) == 0
