"""Find a tritonserver, decide what it can load, start it, and wait until it serves.

    python -m yolo_triton.server [--repo model_repository] [--host 127.0.0.1] [--grpc-port 8001] ...

A `tritonserver` on PATH (NVIDIA's container) is used first; otherwise the one bundled in the
`nvidia-pytriton` wheel, whose python backend is assembled under .venv/ with the stub that
matches this interpreter. Only variants whose backend, device and artefact are present are
loaded; the rest are named with the reason. `yolov8n` is pointed at the best loadable variant.

While it runs, a watchdog reloads any python model whose stub process died (yolo_triton.watchdog);
on SIGTERM/SIGINT (and Server.stop) in-flight requests are drained before tritonserver is stopped
(Server.drain). Bound beyond localhost, the admin APIs need TRITON_API_KEY (docs/security.md).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from yolo_triton import repository, spec
from yolo_triton.watchdog import StubWatchdog

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPO = ROOT / "model_repository"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PY_SHM_BYTES = 64 * 1024 * 1024  # python-backend shared-memory pool per model; grows by as much
# What a caller without the key may not touch on a server bound beyond localhost: loading models
# (the load API accepts model files: code execution), shared memory (reads/writes host memory),
# and the log/trace settings (they change what the server writes, and where).
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
API_KEY_HEADER = "x-api-key"  # HTTP header; gRPC clients send it as "triton-grpc-protocol-x-api-key"
GRPC_KEY_PREFIX = "triton-grpc-protocol-"
API_KEY_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,}")  # no ',', ':' or '=' (they split Triton's flag)
DRAIN_TIMEOUT_S = 30.0  # the launcher's drain (Server.drain) before it sends SIGTERM
# Triton's own wait at SIGTERM. The launcher has drained by then, so this only bounds the unloads,
# and the one that never ends: a model version whose stub died and was sent requests.
EXIT_TIMEOUT_S = 10
CUDA_POOL_BYTES = 4 << 30  # Triton's CUDA memory pool on GPU 0 when a GPU variant is loaded


class LaunchError(RuntimeError):
    """The server cannot be started as asked; the message says what to do."""


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path
    lib_dirs: tuple[Path, ...] = ()
    bundled: bool = False

    @property
    def backends(self) -> set[str]:
        return {p.name for p in self.backend_dir.iterdir() if p.is_dir()} if self.backend_dir.is_dir() else set()


def _pytriton_dir() -> Path | None:
    found = importlib.util.find_spec("pytriton")  # locate without importing: its deps are not installed
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def bundled_libs() -> Path | None:
    """The shared libraries nvidia-pytriton ships (libcudart.so.12, libb64 among them)."""
    pt = _pytriton_dir()
    return pt.parent / "nvidia_pytriton.libs" if pt else None


def _assemble_python_backend(pt: Path) -> Path:
    """A backend directory whose python backend carries the stub for this interpreter.

    The stub must match the Python the models run under (the first python3 on PATH, which the
    launcher makes this venv's), and the wheel keeps one stub per Python version aside.
    """
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = pt / "tritonserver"
    stub = src / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise LaunchError(f"the bundled tritonserver has no python backend stub for Python {ver} (3.10-3.12 do)")
    dest = Path(sys.prefix) / "triton-backends" / "python"
    dest.mkdir(parents=True, exist_ok=True)
    for f in (src / "backends" / "python").iterdir():
        link = dest / f.name
        if not link.exists():
            link.symlink_to(f)
    target = dest / "triton_python_backend_stub"
    if not target.exists():
        shutil.copy2(stub, target)
    return dest.parent


def find_triton() -> TritonInstall:
    system = shutil.which("tritonserver")
    if system:
        binary = Path(system).resolve()
        backend_dir = Path(os.environ.get("TRITON_BACKENDS", binary.parents[1] / "backends"))
        return TritonInstall(binary, backend_dir)
    pt = _pytriton_dir()
    if pt is None or not (pt / "tritonserver" / "bin" / "tritonserver").exists():
        raise LaunchError("no tritonserver found: run `make setup` (bundled server) or use NVIDIA's Triton container")
    libs = bundled_libs()
    return TritonInstall(
        pt / "tritonserver" / "bin" / "tritonserver",
        _assemble_python_backend(pt),
        (libs,) if libs else (),
        bundled=True,
    )


def gpu_available() -> bool:
    if os.environ.get("YOLO_TRITON_NO_GPU"):
        return False
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists() and shutil.which("nvidia-smi") is not None


@dataclass
class Plan:
    load: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    alias: spec.Variant | None = None


def plan_models(repo: Path, backends: set[str], gpu: bool, only: list[str] | None = None) -> Plan:
    """Which variants this server can load, and why each other one is skipped."""
    if not (repo / repository.FACTS_FILE).exists():
        raise LaunchError(f"no built model in {repo}: run `make build-engines` first")
    plan = Plan()
    for v in spec.VARIANTS:
        if only and v.key not in only:
            continue
        missing = [n for n in v.needs if n != "gpu" and n not in backends]
        if "gpu" in v.needs and not gpu:
            plan.skipped[v.ensemble] = "needs a GPU, none visible"
        elif missing:
            plan.skipped[v.ensemble] = f"this tritonserver has no {'/'.join(missing)} backend"
        elif why := _unservable(repo, v):
            plan.skipped[v.ensemble] = why
        else:
            for m in v.models:
                if m not in plan.load:
                    plan.load.append(m)
            if plan.alias is None or v.rank > plan.alias.rank:
                plan.alias = v
    if plan.alias is None:
        raise LaunchError("no variant can be served here: " + "; ".join(f"{k}: {r}" for k, r in plan.skipped.items()))
    plan.load.append(spec.ALIAS)
    return plan


def _unservable(repo: Path, v: spec.Variant) -> str | None:
    """Why the variant's detector artefact cannot be loaded here, or None."""
    if v.backend == "tensorrt":  # plans are per GPU model and TensorRT version: a file is not enough
        from yolo_triton import tensorrt_build

        return tensorrt_build.plan_problem(repo / v.detector)
    if not (repo / v.detector / "1" / v.artefact).exists():
        return f"{v.detector}/1/{v.artefact} not built (make build-engines on such a machine)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ports:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002

    @staticmethod
    def free() -> Ports:
        return Ports(free_port(), free_port(), free_port())


def command(
    install: TritonInstall, repo: Path, plan: Plan, ports: Ports, host: str, api_key: str | None
) -> list[str]:
    cmd = [
        str(install.binary),
        f"--model-repository={repo}",
        f"--backend-directory={install.backend_dir}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in plan.load),
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--http-address={host}",
        f"--http-port={ports.http}",
        f"--metrics-address={host}",
        f"--metrics-port={ports.metrics}",
        f"--backend-config=python,shm-default-byte-size={PY_SHM_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={PY_SHM_BYTES}",
        "--exit-on-error=false",
        "--log-verbose=0",
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        # Triton keeps up to 8 request messages for reuse by default, each holding the capacity of
        # the largest request it carried: one oversized image would stay resident for good.
        "--grpc-infer-allocation-pool-size=0",
    ]
    if any("gpu" in v.needs and v.ensemble in plan.load for v in spec.VARIANTS):
        # GPU ensembles hand tensors between steps in Triton's CUDA pool; the 64 MB default holds
        # less than one batch of 64 images at 640, and what does not fit takes slower paths.
        cmd.append(f"--cuda-memory-pool-byte-size=0:{CUDA_POOL_BYTES}")
    if host not in LOCAL_HOSTS:
        if not api_key:
            raise LaunchError(
                f"binding to {host} exposes the server: set TRITON_API_KEY so that model loading and "
                "shared-memory APIs need that key (or bind 127.0.0.1)"
            )
        if not API_KEY_PATTERN.fullmatch(api_key):
            raise LaunchError(
                "TRITON_API_KEY must be at least 16 characters of A-Z a-z 0-9 . _ ~ - "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        apis = ",".join(RESTRICTED_APIS)
        cmd += [
            f"--grpc-restricted-protocol={apis}:{API_KEY_HEADER}={api_key}",
            f"--http-restricted-api={apis}:{API_KEY_HEADER}={api_key}",
        ]
    return cmd


def key_headers(api_key: str | None) -> dict[str, str] | None:
    """gRPC headers for the restricted APIs (Triton prefixes the key's header name on gRPC)."""
    return {GRPC_KEY_PREFIX + API_KEY_HEADER: api_key} if api_key else None


def environment(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    # The python-backend stub runs the first python3 on PATH: make it this venv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if install.lib_dirs:
        extra = os.pathsep.join(str(p) for p in install.lib_dirs)
        env["LD_LIBRARY_PATH"] = f"{extra}{os.pathsep}{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else extra
    env.setdefault("OMP_NUM_THREADS", "1")  # numpy/cv2 in pre/post must not fight ONNX Runtime for cores
    return env


class Server:
    """A running tritonserver; a context manager for tests, the demo and benchmarks."""

    def __init__(
        self,
        repo: Path = DEFAULT_REPO,
        ports: Ports | None = None,
        host: str = "127.0.0.1",
        only: list[str] | None = None,
        api_key: str | None = None,
        log: Path | None = None,
        watchdog: bool = True,
    ) -> None:
        self.repo = repo
        self.ports = ports or Ports.free()
        self.host = host
        self.install = find_triton()
        self.plan = plan_models(repo, self.install.backends, gpu_available(), only)
        repository.write_alias(repo, self.plan.alias)
        self.cmd = command(self.install, repo, self.plan, self.ports, host, api_key)
        self.headers = key_headers(api_key)
        self.log = log
        self.proc: subprocess.Popen | None = None
        self._out = None
        self.watch = watchdog
        self.watchdog: StubWatchdog | None = None
        self._out = None

    @property
    def url(self) -> str:
        """The gRPC endpoint, host:port."""
        return f"{self._client_host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.ports.http}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def start(self, timeout: float = 300.0) -> Server:
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, env=environment(self.install), stdout=out, stderr=subprocess.STDOUT)
        self._out = out
        self.wait_ready(timeout)
        self.start_watchdog()
        return self

    def start_watchdog(self) -> None:
        """Reload a python model whose stub died (Triton 2.51 does not; see yolo_triton.watchdog)."""
        if self.watch and self.proc is not None:
            self.watchdog = StubWatchdog(self.proc.pid, self.url, self.headers).start()

    def wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LaunchError(f"tritonserver exited with code {self.proc.returncode}{self._log_hint()}")
            try:
                if client.is_server_ready() and all(client.is_model_ready(m) for m in self.plan.load):
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.25)
        self.stop()
        raise LaunchError(f"tritonserver not ready after {timeout:.0f}s{self._log_hint()}")

    def _log_hint(self) -> str:
        return f" (log: {self.log})" if self.log else ""

    def ensembles(self) -> list[str]:
        names = {v.ensemble for v in spec.VARIANTS} | {spec.ALIAS}
        return [m for m in self.plan.load if m in names]

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Let in-flight requests finish, refusing new ones; True when none is left.

        Triton's own SIGTERM drain breaks ensembles: it stops every model's scheduler at once, so
        a request between two steps is refused by the next one ("Server is stopping"). Unloading
        the ensembles first stops new requests (NOT_FOUND "no available versions", which clients
        retry elsewhere) while the steps stay loaded and finish what is inside."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout
        ensembles = self.ensembles()
        try:
            for m in ensembles:
                client.unload_model(m, headers=self.headers, client_timeout=10)
            while time.monotonic() < deadline:
                index = client.get_model_repository_index(headers=self.headers, client_timeout=10)
                busy = [m.name for m in index.models if m.name in ensembles and m.state in ("READY", "UNLOADING")]
                if not busy:
                    return True
                time.sleep(0.1)
            return False
        except Exception:  # noqa: BLE001 - a server that cannot answer has nothing left to drain
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 60.0) -> int | None:
        """Drain (see drain()), then SIGTERM; Triton unloads the models and exits."""
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.drain()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out not in (None, subprocess.DEVNULL):
            self._out.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        lines = [f"tritonserver: {self.install.binary}{' (bundled)' if self.install.bundled else ''}"]
        lines.append(f"yolov8n -> {self.plan.alias.ensemble if self.plan.alias else '-'}")
        lines += [f"skipped {name}: {why}" for name, why in self.plan.skipped.items()]
        return "\n".join(lines)


@contextlib.contextmanager
def running(url: str | None = None, repo: Path = DEFAULT_REPO, log: Path | None = None,
            only: list[str] | None = None) -> Iterator[Server | None]:
    """Use the server at `url` if given; otherwise start one on free ports for the duration.

    Yields the Server it started (None when `url` was given), so measurement tools can both
    target a running deployment and work alone on a fresh clone.
    """
    if url:
        yield None
        return
    with Server(repo, log=log, only=only) as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    ap.add_argument("--host", default=env.get("HOST", "127.0.0.1"))
    ap.add_argument("--grpc-port", type=int, default=int(env.get("GRPC_PORT", 8001)))
    ap.add_argument("--http-port", type=int, default=int(env.get("HTTP_PORT", 8000)))
    ap.add_argument("--metrics-port", type=int, default=int(env.get("METRICS_PORT", 8002)))
    ap.add_argument("--variants", default=env.get("VARIANTS", ""), help="comma-separated variant keys to load")
    args = ap.parse_args(argv)
    only = [v for v in args.variants.split(",") if v] or None
    try:
        server = Server(args.repo, Ports(args.grpc_port, args.http_port, args.metrics_port), args.host, only,
                        env.get("TRITON_API_KEY"))
    except LaunchError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    print(server.describe(), flush=True)
    proc = subprocess.Popen(server.cmd, env=environment(server.install))
    server.proc, server._out = proc, None
    ready, stopping = threading.Event(), threading.Event()

    def shutdown() -> None:
        if server.watchdog is not None:
            server.watchdog.stop()
        drained = server.drain()
        print(f"serve: {'in-flight requests done' if drained else 'drain timed out'}; stopping tritonserver",
              file=sys.stderr, flush=True)
        proc.send_signal(signal.SIGTERM)

    def on_signal(_signum: int, _frame: object) -> None:
        if stopping.is_set() or not ready.is_set():
            proc.send_signal(signal.SIGTERM)  # a second signal, or nothing served yet: stop now
            return
        stopping.set()
        threading.Thread(target=shutdown, name="drain", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        server.wait_ready(300)
    except LaunchError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 1
    server.start_watchdog()
    ready.set()
    print(f"ready on grpc {server.url}, http {args.host}:{args.http_port}, metrics {args.host}:{args.metrics_port}: "
          + ", ".join(server.plan.load), flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
