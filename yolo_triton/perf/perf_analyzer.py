"""perf_analyzer, driven one way by every tool: find the binary, build its command line, run a
level (once more when it does not settle), and read the CSVs it writes.

The sweep and the GPU benchmark measure different loads (request rates with real photos;
concurrency with the image in CUDA shared memory), but the binary, its environment, the
fallback for a level that never stabilises on a shared machine and the meaning of each CSV
column are the same, so they are written here once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from yolo_triton import spec
from yolo_triton.perf import stats
from yolo_triton.perf.errors import PerfToolError
from yolo_triton.perf.tables import read_csv
from yolo_triton.serve import guard, keys
from yolo_triton.serve.install import bundled_libs

US = 1e-3  # perf_analyzer reports microseconds; the tools report milliseconds
UNSTABLE = "Failed to obtain stable measurement"
TIMED_OUT = 124
# perf_analyzer is linked against these names; the pytriton wheel ships them under hashed names.
PA_LIBS = {"libb64.so.0d": "libb64*.so*", "libcudart.so.12": "libcudart*.so.12*"}
PERCENTILES = {"p50 latency": "p50_ms", "p90 latency": "p90_ms", "p95 latency": "p95_ms", "p99 latency": "p99_ms",
               "Avg latency": "avg_ms"}
# Where one request's time goes, as the client saw it (CSV column -> our name, milliseconds).
BREAKDOWN = {"Client Send": "client_send_ms", "Network+Server Send/Recv": "network_ms",
             "Server Queue": "server_queue_ms", "Server Compute Input": "server_compute_input_ms",
             "Server Compute Infer": "server_compute_infer_ms", "Server Compute Output": "server_compute_output_ms",
             "Client Recv": "client_recv_ms"}
PHASE_COLUMNS = dict(zip(("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output"),
                         stats.PHASES))


# --- the binary ---------------------------------------------------------------------------------


def path() -> Path:
    """The venv's perf_analyzer (tritonclient's wheel), else one on PATH (NVIDIA's SDK container)."""
    local = Path(sys.executable).parent / "perf_analyzer"
    if local.exists():
        return local
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise PerfToolError("perf_analyzer not found: run `make setup` (tritonclient ships it) or use NVIDIA's SDK image")


def _lib_links() -> Path | None:
    """A folder of links with the names perf_analyzer wants, pointing at the wheel's renamed copies."""
    libs = bundled_libs()
    if libs is None or not libs.is_dir():
        return None
    dest = Path(sys.prefix) / "perf-analyzer-libs"
    dest.mkdir(parents=True, exist_ok=True)
    for want, pattern in PA_LIBS.items():
        matches = sorted(libs.glob(pattern))
        link = dest / want
        if not matches or link.exists():
            continue
        with contextlib.suppress(FileExistsError):  # another tool made it meanwhile
            link.symlink_to(matches[0])
    return dest


def env() -> dict[str, str]:
    """The environment perf_analyzer runs in: the wheel's libraries, and the guard preloaded so that
    a key passed as @@file@@ (key_args) is read inside the process, never seen in its arguments."""
    out = dict(os.environ)
    links = _lib_links()
    if links is not None:
        old = out.get("LD_LIBRARY_PATH")
        out["LD_LIBRARY_PATH"] = f"{links}{os.pathsep}{old}" if old else str(links)
    out.pop("TRITON_API_KEY", None)
    try:
        return guard.preload_env(out)
    except guard.GuardUnavailable:
        return out  # perf_analyzer runs; only shared memory (key_args) needs the guard


def key_args(url: str, protocol: str = "grpc") -> list[str]:
    """perf_analyzer's `-H` for the admin key of the server whose gRPC endpoint is `url` (registering
    shared memory needs it), naming the key's file: the launch's own for a server of this user on
    this host, else a private copy of TRITON_API_KEY. Empty when no key is known."""
    key = keys.read_key(url)
    if key is None:
        return []
    file = keys.key_file(int(url.rsplit(":", 1)[1]))
    if not file.exists() or file.read_text().strip() != key:
        file = keys.write_private(keys.state_dir() / "perf_analyzer-key", key + "\n")
    header = keys.API_KEY_HEADER if protocol == "http" else keys.GRPC_KEY_PREFIX + keys.API_KEY_HEADER
    return ["-H", f"{header}:{keys.secret_token(file)}"]


def version() -> str:
    """Also the check that the binary runs here (shared libraries, glibc)."""
    binary = path()
    try:
        out = subprocess.run([str(binary), "--version"], env=env(), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PerfToolError(f"{binary} does not run: {e}") from None
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise PerfToolError(f"{binary} does not run here (exit {out.returncode}): {text.splitlines()[-1:]}")
    return text.splitlines()[0] if text else "unknown"


# --- command lines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What every request of a level carries and where it goes."""

    model: str
    url: str
    data: Path  # --input-data JSON (yolo_triton.perf.inputs)
    protocol: str = "grpc"
    batch: int = 1
    shape: tuple[int, ...] | None = None  # IMAGE's shape, when the data has one image size
    shared_memory: str = "none"  # none | system | cuda
    key_url: str = ""  # the gRPC endpoint naming the server's admin key (shared memory needs it)
    extra: tuple[str, ...] = ()  # e.g. --verbose-csv, --percentile 50


@dataclass(frozen=True)
class Load:
    """Requests in flight (concurrency) or sent per second (request rate)."""

    concurrency: int = 0
    request_rate: float = 0.0
    distribution: str = "constant"

    def args(self) -> list[str]:
        if self.concurrency:
            return ["--concurrency-range", str(self.concurrency)]
        # async: a thread waiting on a slow reply must not delay the next scheduled send
        return ["--request-rate-range", f"{self.request_rate:g}", "--async", "--request-distribution",
                self.distribution]


def command(req: Request, load: Load, csv_name: str, measurement: Sequence[str]) -> list[str]:
    cmd = [str(path()), "-m", req.model, "-i", req.protocol, "-u", req.url, "-b", str(req.batch),
           "--input-data", str(req.data), "-f", csv_name, *req.extra, *load.args()]
    if req.shape:
        cmd += ["--shape", f"{spec.IMAGE.name}:{','.join(map(str, req.shape))}"]
    if req.shared_memory != "none":
        cmd += ["--shared-memory", req.shared_memory, "--output-shared-memory-size", str(1 << 20),
                *key_args(req.key_url or req.url, req.protocol)]
    return [*cmd, *measurement]


def count_windows(requests: int, stability_pct: int, trials: int) -> list[str]:
    return ["--measurement-mode", "count_windows", "--measurement-request-count", str(requests),
            "-s", str(stability_pct), "-r", str(trials)]


def time_windows(interval_ms: int, stability_pct: int, trials: int) -> list[str]:
    return ["--measurement-interval", str(interval_ms), "-s", str(stability_pct), "-r", str(trials)]


def fixed_count(requests: int) -> list[str]:
    """One measurement over this many requests: no stability search."""
    return ["--request-count", str(requests)]


# --- running a level ----------------------------------------------------------------------------


class Observer(Protocol):
    """What watches a level besides perf_analyzer (probe.Probe: the server's statistics and metrics)."""

    def start(self) -> None: ...

    def stop(self) -> object: ...


@dataclass
class Outcome:
    """The last attempt at a level: its exit status, output and first CSV row."""

    rc: int = 0
    text: str = ""
    row: dict = field(default_factory=dict)
    stable: bool = True  # False: measured over a fixed request count after the windows did not settle
    commands: list[str] = field(default_factory=list)  # every attempt, failed ones included
    window: object = None  # what the probe saw around the last attempt

    @property
    def ok(self) -> bool:
        return self.rc == 0 and bool(self.row)

    def problem(self, log: Path) -> str:
        tail = [ln for ln in self.text.strip().splitlines() if ln.strip()][-3:]
        return f"perf_analyzer exit {self.rc}: {' | '.join(tail)} (log: {log})"


def _invoke(cmd: list[str], cwd: Path, timeout_s: float) -> tuple[int, str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        text = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return TIMED_OUT, text + f"\n[perf_analyzer] timed out after {timeout_s:.0f}s"
    return out.returncode, out.stdout + out.stderr


def measure(req: Request, load: Load, folder: Path, tag: str, first: Sequence[str], fallback: Sequence[str] | None,
            timeout_s: float, probe: Observer | None = None, on_timeout: Callable[[], None] | None = None) -> Outcome:
    """Run one level in `folder` (CSV `<tag>.csv`, log `<tag>.log`).

    With `on_timeout`, a run that hangs (perf_analyzer 2.51 was seen to in request-rate mode with
    a small request count) is measured once more, after calling it. With `fallback`, a level whose
    windows never agree within the tolerance (a shared or busy machine) is measured once more
    with those arguments, and marked unstable."""
    csv_name = f"{tag}.csv"
    out = Outcome()
    logs = []

    def attempt(measurement: Sequence[str]) -> None:
        for old in folder.glob(f"*{csv_name}"):  # the composing models' CSVs too
            old.unlink()
        cmd = command(req, load, csv_name, measurement)
        out.commands.append(" ".join(cmd))
        if probe is not None:
            probe.start()
        out.rc, out.text = _invoke(cmd, folder, timeout_s)
        if probe is not None:
            out.window = probe.stop()
        logs.append(out.commands[-1] + "\n\n" + out.text)

    attempt(first)
    if out.rc == TIMED_OUT and on_timeout is not None:
        on_timeout()
        attempt(first)
    if out.rc != 0 and UNSTABLE in out.text and fallback is not None:
        out.stable = False
        attempt(fallback)
    (folder / f"{tag}.log").write_text("\n\n".join(logs))
    rows = read_csv(folder / csv_name) if out.rc == 0 and (folder / csv_name).exists() else []
    out.row = dict(rows[0]) if rows else {}
    return out


# --- what the CSVs say --------------------------------------------------------------------------


def latency(row: dict, text: str = "") -> dict[str, float]:
    """Throughput, percentiles and the client-side breakdown of one level (milliseconds)."""

    def ms(col: str) -> float:
        return float(row.get(col, 0.0)) * US

    delayed = re.search(r"([\d.]+)% of the requests were delayed", text)
    return {"throughput": float(row.get("Inferences/Second", 0.0)),
            **{ours: ms(theirs) for theirs, ours in PERCENTILES.items()},
            **{ours: ms(theirs) for theirs, ours in BREAKDOWN.items()},
            "delayed_pct": float(delayed.group(1)) if delayed else 0.0}


def composing(folder: Path, csv_name: str) -> dict[str, stats.StageTime]:
    """Per composing model of an ensemble, from the `<model>_v<version>.<csv>` files perf_analyzer
    writes next to its own with --verbose-csv: mean ms per request by phase (no request counts)."""
    out = {}
    for f in sorted(folder.glob(f"*_v*.{csv_name}")):
        name = f.name[: -len(csv_name) - 1].rsplit("_v", 1)[0]
        data = read_csv(f)
        if data:
            phases = {ours: float(data[0].get(theirs, 0.0)) * US for theirs, ours in PHASE_COLUMNS.items()}
            out[name] = stats.StageTime(name, 0, 0, phases)
    return out
