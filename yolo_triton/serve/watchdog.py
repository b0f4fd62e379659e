"""Bring a python-backend model back when its stub process dies.

Triton 2.51's python backend does not restart a stub that was killed (the restart was dropped
when the backend's request paths were unified, python_backend PR #360): every later request to
that model fails with INTERNAL "Stub process '<model>_0_0' is not healthy", while the server
still reports the model READY. Reloading the model through the repository API starts a fresh
stub, so this watchdog polls the server's child processes and reloads the model of any stub
that has died. A plain load of an unchanged model is a no-op and one with the same config keeps
the (dead) instance, so the reload carries the model's own config with one extra parameter,
which makes Triton build new instances; the models ignore it.

The dead stub's shared-memory region is never unlinked by Triton (it stays in /dev/shm, holding
its memory, even after the server exits), so the watchdog removes it once the model is back.

A killed stub stays a zombie (the backend never reaps it); a stub that the backend stopped on
purpose (unload, reload, shutdown) is reaped at once. So "zombie on two polls in a row" is the
signal, and the model is only reloaded while the server still says it is ready: a model that an
operator is unloading is left alone.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

STUB_NAME = "triton_python_backend_stub"
RETRY_S = 5.0
RELOAD_PARAMETER = "watchdog_reload"  # config parameter that forces new instances (see above)
SHM_DIR = Path("/dev/shm")
LAST_WORDS_BYTES = 64 << 10  # of the server log, read back for a dead stub's cause
_PY_ERROR = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")


def last_words(log: Path, start: int) -> tuple[str, int]:
    """What the server log says about a stub's death, from byte `start` on, and the log's end.

    A stub that dies of an exception in its C++ part (a BYTES input it cannot deserialise, say)
    leaves `terminate called after throwing ...` and a `what():` line; one that dies in Python
    leaves a traceback whose last line names the error. The last such line is the cause; ""
    when the log says nothing (a stub killed from outside)."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            end = f.tell()
            f.seek(max(start, end - LAST_WORDS_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "", start
    lines = [line.strip() for line in text.splitlines()]
    causes = [line for line in lines if line.startswith("what():") or _PY_ERROR.match(line)]
    return (causes[-1][:300] if causes else ""), end


@dataclass(frozen=True)
class Recovery:
    model: str
    dead_pid: int
    ok: bool
    seconds: float  # from noticing the dead stub to the reload's answer
    error: str = ""


@dataclass(frozen=True)
class Stub:
    model: str
    shm_region: str | None  # name under /dev/shm


def _stub(proc: psutil.Process) -> Stub | None:
    """What a stub serves: its arguments are <repo>/<model>/<version>/model.py, then its region."""
    try:
        args = proc.cmdline()
    except psutil.Error:
        return None
    if len(args) < 2 or Path(args[0]).name != STUB_NAME:
        return None
    region = args[2] if len(args) > 2 and "/" not in args[2] else None
    return Stub(Path(args[1]).parents[1].name, region)


class StubWatchdog:
    """A daemon thread that reloads models whose python stub died (see the module docstring)."""

    def __init__(
        self,
        server_pid: int,
        url: str,
        headers: dict[str, str] | None = None,
        interval_s: float = 0.5,
        log: Callable[[str], None] | None = None,
        server_log: Path | None = None,
    ) -> None:
        """`server_log`: the file tritonserver writes, where a dead stub's last words are read."""
        self.server = psutil.Process(server_pid)
        self.server_log = server_log
        self._log_read = server_log.stat().st_size if server_log and server_log.exists() else 0
        self.url, self.headers, self.interval_s = url, headers, interval_s
        self.log = log or (lambda msg: print(f"watchdog: {msg}", file=sys.stderr, flush=True))
        self.recoveries: list[Recovery] = []
        self._stubs: dict[int, Stub] = {}  # stub pid -> what it served, learnt while it was alive
        self._suspects: set[int] = set()
        self._handled: set[int] = set()
        self._retry_at: dict[int, float] = {}
        self._generation = 0  # after a failed reload, wait before the next one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> StubWatchdog:
        self.scan()  # learn every stub now: one killed before the first poll is still known
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.check(client)
                except psutil.NoSuchProcess:
                    return  # the server itself is gone: nothing left to watch
                except Exception as e:  # noqa: BLE001 - the watchdog must outlive any one failure
                    self.log(f"check failed: {e}")
        finally:
            client.close()

    def scan(self) -> tuple[set[int], set[str]]:
        """Zombie stubs (pids), and the models whose stub is alive; learns the live stubs."""
        zombies, live = set(), set()
        for child in self.server.children():
            try:
                status, name = child.status(), child.name()
            except psutil.NoSuchProcess:
                continue
            if status == psutil.STATUS_ZOMBIE:
                if child.pid in self._stubs or STUB_NAME.startswith(name):  # a zombie's name is cut to 15
                    zombies.add(child.pid)
            elif stub := self._stubs.get(child.pid) or _stub(child):
                self._stubs[child.pid] = stub
                live.add(stub.model)
        return zombies, live

    def dead_stubs(self) -> list[tuple[int, str]]:
        """(pid, model) of the stubs that have been zombies on two polls in a row."""
        zombies, live = self.scan()
        now = time.monotonic()
        zombies = {p for p in zombies if p not in self._handled and now >= self._retry_at.get(p, 0.0)}
        confirmed, self._suspects = zombies & self._suspects, zombies - self._suspects
        dead = []
        for pid in sorted(confirmed):
            if pid in self._stubs:
                dead.append((pid, self._stubs[pid].model))
                continue
            # Killed before a poll saw it alive (a zombie's arguments cannot be read): it served
            # whichever model no longer has a live stub.
            missing = sorted({s.model for s in self._stubs.values()} - live)
            dead += [(pid, m) for m in missing]
            if not missing:
                self._handled.add(pid)
        return dead

    def check(self, client) -> list[str]:  # noqa: ANN001 - tritonclient.grpc.InferenceServerClient
        """One poll; reloads (and returns) the models whose stub died."""
        reloaded = []
        for pid, model in self.dead_stubs():
            start = time.monotonic()
            try:
                if not client.is_model_ready(model, client_timeout=10):
                    self._handled.add(pid)  # being unloaded or reloaded by someone else
                    continue
                self.log(f"stub {pid} of '{model}' died{self._cause()}; reloading the model")
                self._generation += 1
                config = client.get_model_config(model, as_json=True, client_timeout=10)["config"]
                config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": str(self._generation)}
                client.load_model(model, config=json.dumps(config), headers=self.headers, client_timeout=300)
            except Exception as e:  # noqa: BLE001 - tritonclient raises its own type; try again next poll
                self.recoveries.append(Recovery(model, pid, False, time.monotonic() - start, str(e)))
                self.log(f"reloading '{model}' failed ({e}); trying again in {RETRY_S:g} s")
                self._suspects.add(pid)
                self._retry_at[pid] = time.monotonic() + RETRY_S
                continue
            self._handled.add(pid)
            if pid in self._stubs:
                self._unlink_region(self._stubs[pid])
            took = time.monotonic() - start
            self.recoveries.append(Recovery(model, pid, True, took))
            self.log(f"'{model}' reloaded in {took:.1f} s")
            reloaded.append(model)
        return reloaded

    def _cause(self) -> str:
        if self.server_log is None:
            return ""
        time.sleep(0.2)  # the stub's last lines reach the log through the server's pipe
        words, self._log_read = last_words(self.server_log, self._log_read)
        return f" (server log: {words})" if words else ""

    def unlink_regions(self) -> None:
        """After the server itself was killed: remove the regions of every stub it had (Triton's
        own shutdown does this; a killed server leaves them in /dev/shm, holding their memory)."""
        for stub in self._stubs.values():
            self._unlink_region(stub)

    def _unlink_region(self, stub: Stub) -> None:
        if stub.shm_region:
            with contextlib.suppress(OSError):
                (SHM_DIR / stub.shm_region).unlink()
