"""Shared plumbing of the measurement tools (perf/): perf_analyzer, input data, run folders.

The tools differ in how they load the server, not in where they find the binary, which images
they send, or where results go; keeping that here means a perf sweep, a Locust run and the
comparison measure the same photos and land in folders the report can find.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo_triton import spec
from yolo_triton.client import images
from yolo_triton.serve import guard, keys
from yolo_triton.serve.install import bundled_libs
from yolo_triton.serve.launcher import DEFAULT_REPO, running

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"
SAMPLES = ROOT / "assets" / "samples"
META_FILE = "meta.json"  # written last: a run folder without it did not finish
VERSIONED_PACKAGES = ("tritonclient", "nvidia-pytriton", "ultralytics", "onnxruntime", "torch", "locust", "numpy")
# perf_analyzer is linked against these names; the pytriton wheel ships them under hashed names.
PA_LIBS = {"libb64.so.0d": "libb64*.so*", "libcudart.so.12": "libcudart*.so.12*"}


class PerfToolError(RuntimeError):
    """A measurement cannot run as asked; the message says what to do."""


# --- perf_analyzer ------------------------------------------------------------------------------


def perf_analyzer_path() -> Path:
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


def perf_analyzer_env() -> dict[str, str]:
    """The environment perf_analyzer runs in: the wheel's libraries, and the guard preloaded so that
    a key passed as @@file@@ (key_args) is read inside the process, never seen in its arguments."""
    env = dict(os.environ)
    links = _lib_links()
    if links is not None:
        old = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{links}{os.pathsep}{old}" if old else str(links)
    env.pop("TRITON_API_KEY", None)
    try:
        return guard.preload_env(env)
    except guard.GuardUnavailable:
        return env  # perf_analyzer runs; only shared memory (key_args) needs the guard


def key_args(url: str, protocol: str = "grpc") -> list[str]:
    """perf_analyzer's `-H` for the admin key of the server whose gRPC endpoint is `url` (registering
    shared memory needs it), naming the key's file: the launch's own for a server of this user on
    this host, else a private copy of TRITON_API_KEY. Empty when no key is known."""
    key = keys.read_key(url)
    if key is None:
        return []
    path = keys.key_file(int(url.rsplit(":", 1)[1]))
    if not path.exists() or path.read_text().strip() != key:
        path = keys.write_private(keys.state_dir() / "perf_analyzer-key", key + "\n")
    header = keys.API_KEY_HEADER if protocol == "http" else keys.GRPC_KEY_PREFIX + keys.API_KEY_HEADER
    return ["-H", f"{header}:{keys.secret_token(path)}"]


def perf_analyzer_version() -> str:
    """Also the check that the binary runs here (shared libraries, glibc)."""
    binary = perf_analyzer_path()
    try:
        out = subprocess.run([str(binary), "--version"], env=perf_analyzer_env(), capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PerfToolError(f"{binary} does not run: {e}") from None
    text = (out.stdout + out.stderr).strip()
    if out.returncode != 0:
        raise PerfToolError(f"{binary} does not run here (exit {out.returncode}): {text.splitlines()[-1:]}")
    return text.splitlines()[0] if text else "unknown"


# --- input data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # BGR uint8 (H, W, 3), what the clients send

    @property
    def size(self) -> str:
        h, w = self.image.shape[:2]
        return f"{w}x{h}"


def _ultralytics_assets() -> Path | None:
    found = importlib.util.find_spec("ultralytics")  # locate without importing torch
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / "assets"


def sample_images(sources: Sequence[str] = ()) -> list[Sample]:
    """Real photos to send: the given files/folders, else the shipped samples plus Ultralytics'
    bus.jpg and zidane.jpg (one entry per file name). Real sizes matter: letterbox, copies and
    the gRPC payload all scale with the photo, which random fixed-size tensors would hide."""
    paths: list[Path] = []
    if sources:
        paths = images.expand(list(sources))
    else:
        if SAMPLES.is_dir():
            paths += images.expand([str(SAMPLES)])
        assets = _ultralytics_assets()
        if assets is not None:
            paths += [assets / n for n in ("bus.jpg", "zidane.jpg") if (assets / n).exists()]
    seen: set[str] = set()
    out: list[Sample] = []
    for p in paths:
        if p.name in seen or p.suffix.lower() not in images.IMAGE_SUFFIXES:
            continue
        seen.add(p.name)
        out.append(Sample(p.name, images.read(p)))
    if not out:
        raise PerfToolError("no sample images: pass --images FILES_OR_FOLDERS (assets/samples is empty or missing)")
    return out


def spread(samples: Sequence[Sample], n: int) -> list[Sample]:
    """n samples spanning the size range (smallest, largest, in between): a quick run still sends
    several real photo shapes."""
    ordered = sorted(samples, key=lambda s: (s.image.shape[0] * s.image.shape[1], s.name))
    if n >= len(ordered):
        return list(ordered)
    if n <= 1:
        return [ordered[-1]]
    idx = sorted({round(i * (len(ordered) - 1) / (n - 1)) for i in range(n)})
    return [ordered[i] for i in idx]


def write_input_data(samples: Sequence[Sample], path: Path) -> Path:
    """perf_analyzer --input-data JSON: one entry per photo with its own shape.

    Only IMAGE is given; the optional threshold inputs are left out so requests use the server's
    defaults, as a client that sends none does."""
    data = [
        {spec.IMAGE.name: {"b64": base64.b64encode(np.ascontiguousarray(s.image).tobytes()).decode("ascii"),
                           "shape": list(s.image.shape)}}
        for s in samples
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


# --- CSV ----------------------------------------------------------------------------------------


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path: Path) -> list[dict[str, float | str]]:
    """Rows of a CSV with numeric cells as floats (perf_analyzer's and Locust's reports)."""
    with path.open(newline="") as f:
        return [{k.strip(): _number(v.strip()) for k, v in row.items() if k is not None} for row in csv.DictReader(f)]


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    cols = list(columns or (rows[0].keys() if rows else []))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}".rstrip("0").rstrip(".") if isinstance(v, float) else v) for k, v in r.items()})
    return path


def markdown_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 1) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --- run folders and what a run records about itself --------------------------------------------


def add_target_args(ap: argparse.ArgumentParser, kind: str, quick: str | None) -> None:
    """The options every measurement tool shares: what to measure against and where results go.

    `quick` is the help text of --quick (None: the tool has no quick mode)."""
    from yolo_triton.serve.launcher import DEFAULT_REPO

    ap.add_argument("--images", nargs="+", default=[], help="image files/folders (default: the samples)")
    ap.add_argument("--url", help="HOST:PORT of a running server (gRPC); default: start one here")
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository when starting a server")
    ap.add_argument("--runs-dir", type=Path, default=RUNS, help=f"results go to RUNS_DIR/{kind}/<timestamp>/")
    if quick is not None:
        ap.add_argument("--quick", action="store_true", help=quick)


def run_dir(kind: str, runs: Path = RUNS) -> Path:
    """runs/<kind>/<YYYYmmdd-HHMMSS>/, new each time (a suffix when two start in one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs / kind
    for i in range(1000):
        d = base / (stamp if i == 0 else f"{stamp}-{i + 1}")
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise PerfToolError(f"cannot create a run folder under {base}")


def latest_run(kind: str, runs: Path = RUNS) -> Path | None:
    """The newest finished run of a kind (one whose meta.json was written)."""
    base = runs / kind
    if not base.is_dir():
        return None
    done = [d for d in base.iterdir() if (d / META_FILE).is_file()]
    return max(done, key=lambda d: ((d / META_FILE).stat().st_mtime, d.name), default=None)


def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    with contextlib.suppress(OSError):
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]  # the box is shared: say how busy it was
    gpus = _gpus()
    if gpus:
        info["gpus"] = gpus
    return info


def _gpus() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class Target:
    """The server a tool measures; `skipped` says why other variants are absent, when known."""

    url: str
    skipped: dict[str, str]


def server_info(target: Target) -> dict:
    """What the measured server is: its version, the loaded ensembles, what `yolov8n` points at,
    and the variants it does not serve with the reason."""
    import tritonclient.grpc as grpcclient

    url = target.url
    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            meta = client.get_server_metadata(as_json=True, client_timeout=30)
        except Exception as e:  # noqa: BLE001 - tritonclient raises its own type; the message is what matters
            raise PerfToolError(f"cannot reach tritonserver at {url}: {str(e).splitlines()[0][:200]}") from None
        variants = loaded_variants(url)
        skipped = {v.ensemble: target.skipped.get(v.ensemble, "not loaded on that server")
                   for v in spec.VARIANTS if v.ensemble not in variants}
        info: dict = {"url": url, "tritonserver": meta.get("version", "unknown"), "variants": variants,
                      "skipped": skipped}
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


def variant_of(model: str) -> spec.Variant | None:
    for v in spec.VARIANTS:
        if v.ensemble == model:
            return v
    return None


def write_meta(folder: Path, tool: str, extra: dict[str, object]) -> Path:
    """The run's record (command line, machine, versions); written last, it marks the run finished.

    Paths inside the project are written relative to its root, so the recorded command lines can
    be pasted into another checkout."""
    meta = {
        "tool": tool,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine_info(),
        "versions": package_versions(),
        **extra,
    }
    path = folder / META_FILE
    path.write_text(json.dumps(meta, indent=1, default=str).replace(f"{ROOT}{os.sep}", ""))
    return path


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META_FILE).read_text())


@contextlib.contextmanager
def target(url: str | None, repo: Path = DEFAULT_REPO, log: Path | None = None, tool: str = "perf",
           ) -> Iterator[Target]:
    """The server to measure: the one at `url`, else one started here for the duration."""
    if not url:
        print(f"{tool}: starting tritonserver on free ports (repository {repo}; log {log})", flush=True)
    with running(url, repo=repo, log=log) as server:
        if server is None:
            yield Target(str(url), {})
            return
        print(f"{tool}: tritonserver ready on {server.url} ({', '.join(server.plan.load)})", flush=True)
        for name, why in server.plan.skipped.items():
            print(f"{tool}: not served here: {name}: {why}", flush=True)
        yield Target(server.url, dict(server.plan.skipped))
