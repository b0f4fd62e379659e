"""Decide what a tritonserver can load, start it guarded, and wait until it serves (`Server`).

What is loaded is serve.plan's choice: only variants whose backend, device and artefact are
present, the rest named with the reason; `yolov8n` is pointed at the best loadable variant.

What a caller can reach (docs/security.md):
- gRPC on `host`: inference, health, metadata and statistics for anyone; the model-repository,
  shared-memory, logging and trace APIs only with the per-launch admin key (serve.keys),
  on loopback too.
- HTTP only when asked for (`--http`): Triton's own HTTP endpoint has no size, nesting or
  decompression limits, so it then listens on a private loopback port that answers nothing
  without a proxy key, and nginx (serve.http_proxy) serves `host:http-port` in front.
- Every request's tensor shapes pass the guard preloaded into tritonserver (serve/guard.c)
  before Triton stores them: no declared shape can kill a python stub.

While it runs, a watchdog reloads any python model whose stub process died (serve.watchdog).
Server.stop drains in-flight requests before tritonserver is stopped (Server.drain); the
foreground command and its signals are serve/cli.py.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from yolo_triton import spec
from yolo_triton.paths import DEFAULT_REPO
from yolo_triton.repository import configs as repository
from yolo_triton.serve import guard, keys
from yolo_triton.serve.install import (
    LaunchError,
    TritonInstall,
    die_with_parent,
    environment,
    find_triton,
    gpu_available,
    stub_numpy_problem,
    stub_numpy_version,
)
from yolo_triton.serve.keys import API_KEY_HEADER, key_headers
from yolo_triton.serve.log_filter import LogFilter
from yolo_triton.serve.plan import Plan, plan_models
from yolo_triton.serve.watchdog import StubWatchdog

PY_SHM_BYTES = 64 * 1024 * 1024  # python-backend shared-memory pool per model; grows by as much
# What a caller without the admin key may not touch: loading models (the load API accepts model
# files: code execution), shared memory (the server reads and writes host memory by name), and
# the log/trace settings (they change what the server writes, and where).
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
# Triton's private HTTP listener answers these only with the proxy's key: only nginx talks to it.
PROXIED_APIS = ("health", "metadata", "inference", "model-config", "statistics")
DRAIN_TIMEOUT_S = 30.0  # the launcher's drain (Server.drain) before it sends SIGTERM
# Triton's own wait at SIGTERM. The launcher has drained by then, so this only bounds the unloads,
# and the one that never ends: a model version whose stub died and was sent requests.
EXIT_TIMEOUT_S = 10
CUDA_POOL_BYTES = 4 << 30  # Triton's CUDA memory pool on GPU 0 when a GPU variant is loaded


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, and never one this process handed out before. Ports are
    chosen before the servers that bind them start, so the kernel may offer a port twice in a row:
    two replicas of `make scale` once got the same one (one's metrics port was the other's gRPC)."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free local port that this process has not handed out already ({len(_HANDED_OUT)} so far)")


@dataclass
class Ports:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002

    @staticmethod
    def free() -> Ports:
        return Ports(free_port(), free_port(), free_port())


@dataclass(frozen=True)
class Secrets:
    """Files holding this launch's keys; process arguments name the files, never the keys."""

    admin: Path
    proxy: Path | None = None  # only with HTTP on


def command(
    install: TritonInstall, repo: Path, plan: Plan, ports: Ports, host: str, secrets: Secrets,
    inner_http_port: int | None = None,
) -> list[str]:
    admin = f"{API_KEY_HEADER}={keys.secret_token(secrets.admin)}"
    cmd = [
        str(install.binary),
        f"--model-repository={repo}",
        f"--backend-directory={install.backend_dir}",
        "--model-control-mode=explicit",
        *(f"--load-model={m}" for m in plan.load),
        f"--grpc-address={host}",
        f"--grpc-port={ports.grpc}",
        f"--grpc-restricted-protocol={','.join(RESTRICTED_APIS)}:{admin}",
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
    if inner_http_port is None:
        cmd.append("--allow-http=false")
    else:
        if secrets.proxy is None:
            raise ValueError("HTTP behind the proxy needs the proxy key's file")
        proxy = f"{http_proxy().PROXY_KEY_HEADER}={keys.secret_token(secrets.proxy)}"
        cmd += [
            "--allow-http=true",
            "--http-address=127.0.0.1",
            f"--http-port={inner_http_port}",
            f"--http-restricted-api={','.join(RESTRICTED_APIS)}:{admin}",
            f"--http-restricted-api={','.join(PROXIED_APIS)}:{proxy}",
        ]
    if any("gpu" in v.needs and v.ensemble in plan.load for v in spec.VARIANTS):
        # GPU ensembles hand tensors between steps in Triton's CUDA pool; the 64 MB default holds
        # less than one batch of 64 images at 640, and what does not fit takes slower paths.
        cmd.append(f"--cuda-memory-pool-byte-size=0:{CUDA_POOL_BYTES}")
    return cmd


def http_proxy():  # noqa: ANN201 - the module, imported only when HTTP is asked for
    from yolo_triton.serve import http_proxy as module

    return module


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
        http: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        """`die_with_parent`: tritonserver and nginx get SIGTERM when the calling thread ends (the
        launcher's main thread; see triton_install.die_with_parent)."""
        self.repo = repo
        self.die_with_parent = die_with_parent
        self.ports = ports or Ports.free()
        self.host = host
        self.install = find_triton()
        problem = stub_numpy_problem(self.install, stub_numpy_version)
        if problem:
            raise LaunchError(problem)
        self.gpu = gpu_available()
        self.plan = plan_models(repo, self.install.backends, self.gpu, only)
        repository.write_alias(repo, self.plan.alias)
        if self.plan.network is not None:
            repository.write_network_alias(repo, self.plan.network)
        try:
            self.api_key = keys.checked_key(api_key) if api_key else keys.new_key()
        except keys.BadKey as e:
            raise LaunchError(str(e)) from None
        folder = keys.server_dir(self.ports.grpc)
        self.secrets = Secrets(folder / "api-key", folder / "proxy-key" if http else None)
        self.http = http
        self.inner_http_port = free_port() if http else None
        self.cmd = command(self.install, repo, self.plan, self.ports, host, self.secrets, self.inner_http_port)
        self.log_filter: LogFilter | None = None
        self.headers = key_headers(self.api_key)
        self.log = log
        self.proc: subprocess.Popen | None = None
        self._out = None
        self.watch = watchdog
        self.watchdog: StubWatchdog | None = None
        self.proxy = None

    @property
    def url(self) -> str:
        """The gRPC endpoint, host:port."""
        return f"{self._client_host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        """The HTTP front door (nginx), host:port; only with `http=True`."""
        return f"{self._client_host}:{self.ports.http}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def spawn(self, stdout: object = None) -> subprocess.Popen:
        """Write this launch's key files and start tritonserver (guarded, in its own session)."""
        keys.write_private(self.secrets.admin, self.api_key + "\n")
        if self.secrets.proxy is not None:
            keys.write_private(self.secrets.proxy, keys.new_key() + "\n")
        try:
            env = guard.preload_env(environment(self.install))
        except guard.GuardUnavailable as e:
            raise LaunchError(str(e)) from None
        quiet = not self.gpu and stdout is not subprocess.DEVNULL  # see serve.log_filter
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.PIPE if quiet else stdout,
                                     stderr=subprocess.STDOUT if stdout or quiet else None,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent if self.die_with_parent else None)
        if quiet:
            sink = stdout if stdout is not None else sys.stdout.buffer
            self.log_filter = LogFilter(self.proc.stdout, sink)
            self.log_filter.start()
        return self.proc

    def start(self, timeout: float = 300.0) -> Server:
        return self.launch().ready(timeout)

    def launch(self) -> Server:
        """Start tritonserver without waiting for it (several replicas load their models at once)."""
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self.spawn(self._out)
        return self

    def ready(self, timeout: float = 300.0) -> Server:
        """Wait until the launched server serves every model, then start its front and watchdog."""
        self.wait_ready(timeout)
        self.start_front()
        self.start_watchdog()
        return self

    def start_front(self) -> None:
        """nginx in front of Triton's private HTTP listener, when HTTP is on."""
        if not self.http or self.proxy is not None:
            return
        proxy = http_proxy()
        try:
            self.proxy = proxy.HttpProxy(self.host, self.ports.http, self.inner_http_port,
                                         self.secrets.proxy.read_text().strip(),
                                         keys.server_dir(self.ports.grpc) / "http",
                                         die_with_parent=self.die_with_parent).start()
        except proxy.ProxyUnavailable as e:
            self.stop()
            raise LaunchError(f"HTTP was asked for but cannot be served safely: {e}") from None

    def start_watchdog(self) -> None:
        """Reload a python model whose stub died (Triton 2.51 does not; see yolo_triton.watchdog)."""
        if self.watch and self.proc is not None:
            self.watchdog = StubWatchdog(self.proc.pid, self.url, self.headers, server_log=self.log).start()

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
        names = {v.ensemble for v in spec.VARIANTS} | {spec.ALIAS, spec.NETWORK_ALIAS}
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
        if self.proxy is not None:
            self.proxy.stop()  # the front door first: nothing new arrives while the rest drains
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
        if self.log_filter is not None:
            self.log_filter.join(timeout=5)  # the last lines reach the log before it is closed
        if self._out not in (None, subprocess.DEVNULL):
            self._out.close()
        keys.forget(self.ports.grpc)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        lines = [f"tritonserver: {self.install.binary}{' (bundled)' if self.install.bundled else ''}"]
        lines.append(f"{spec.ALIAS} -> {self.plan.alias.ensemble if self.plan.alias else '-'}: {self.plan.why}")
        lines += [f"not chosen {name}: {why}" for name, why in self.plan.passed_over.items()]
        if self.plan.network is not None:
            lines.append(f"{spec.NETWORK_ALIAS} -> {self.plan.network.detector} (for Ultralytics' client: "
                         f"YOLO('grpc://{self.url}/{spec.NETWORK_ALIAS}', task='detect'))")
        lines += [f"skipped {name}: {why}" for name, why in self.plan.skipped.items()]
        lines.append(f"admin key (model control, shared memory, logging, trace): in {self.secrets.admin}")
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
