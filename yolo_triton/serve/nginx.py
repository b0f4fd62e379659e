"""nginx as a child process of the project: found, configured, started, known to answer, stopped.

Two fronts run it: the HTTP proxy in front of one tritonserver (serve.http_proxy) and the gRPC
balancer in front of several (perf.balancer). Each renders its own configuration; what they
share is here: where nginx is, a private state folder (config, pid, logs, temp files), the
foreground master in a session of its own, and a graceful stop that never leaves workers behind.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from yolo_triton.serve.install import die_with_parent, stop_group

SBIN_NGINX = Path("/usr/sbin/nginx")  # Debian's location; /usr/sbin is not on a normal user's PATH
INSTALL_HINT = "apt-get install nginx-light (as root; `make setup` does it)"


class ProxyUnavailable(RuntimeError):
    """nginx cannot run here, or did not come up; the message says what to do."""


def find_nginx(needed_by: str = "this") -> Path:
    """The nginx binary: PATH first, then Debian's /usr/sbin/nginx; `needed_by` opens the error."""
    found = shutil.which("nginx")
    if found:
        return Path(found)
    if os.access(SBIN_NGINX, os.X_OK):
        return SBIN_NGINX
    raise ProxyUnavailable(f"{needed_by} needs nginx and none is installed: {INSTALL_HINT}")


def user_directive() -> str:
    """As root, workers would run as `nobody`, who cannot write the state folder (0700)."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def main_context(state: str) -> str:
    """The configuration's top: who the workers run as, one worker, pid, lock and error log in the
    state folder, and the events block."""
    return f"""{user_directive()}
worker_processes 1;
pid {state}/nginx.pid;
lock_file {state}/nginx.lock;
error_log {state}/error.log warn;

events {{
    worker_connections 1024;
}}"""


def temp_paths(state: str) -> str:
    """nginx's temp folders inside the state folder (the defaults are under /var, root's)."""
    return "\n".join(f"    {kind}_temp_path {state}/temp/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))


class NginxProcess:
    """One nginx master (and its workers) in the foreground, in a session of its own, so a Ctrl-C
    meant for the tool does not cut requests in flight (stop() ends them gracefully). With
    `die_with_parent` it gets SIGTERM when the thread that called start() ends.

    A subclass renders the configuration (`render`) and says how to tell that it serves (`_answers`).
    """

    name = "nginx"

    def __init__(self, state_dir: Path, die_with_parent: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.state_dir / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "nginx.pid"

    @property
    def error_log(self) -> Path:
        return self.state_dir / "error.log"

    @property
    def state(self) -> str:
        """The state folder as it goes into the configuration (checked: no nginx syntax in it)."""
        state = str(self.state_dir)
        if re.search(r"[\s;'\"${}#\\]", state):
            raise ValueError(f"state_dir must not contain spaces or nginx syntax characters: {state!r}")
        return state

    @property
    def url(self) -> str:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _write_config(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        (self.state_dir / "temp").mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
            f.write(self.render())

    def start(self, timeout: float = 10.0) -> NginxProcess:
        """Run nginx in the foreground as a child; return once it serves on its listen port."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        binary = find_nginx(self.name)
        self._write_config()
        self.pid_file.unlink(missing_ok=True)
        with open(self.error_log, "ab") as log:  # errors before nginx reads error_log go to stderr: here too
            self.proc = subprocess.Popen(
                [str(binary), "-p", f"{self.state_dir}/", "-c", str(self.config_path), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProxyUnavailable(f"{self.name} exited with code {self.proc.returncode}: {self._log_tail()}")
            if self._is_ours() and self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise ProxyUnavailable(f"{self.name} did not answer on {self.url} within {timeout:.0f}s: {self._log_tail()}")

    def _is_ours(self) -> bool:
        """nginx writes its pid file once it holds the listening socket; until then an answer on
        the port may come from someone else's server (nginx retries a busy port for 2.5 s)."""
        try:
            return self.proc is not None and self.pid_file.read_text().strip() == str(self.proc.pid)
        except OSError:
            return False

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.error_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no error log)"
        return " | ".join(text[-lines:]) or "(error log empty)"

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT: nginx stops listening, requests in flight finish), after `timeout`
        SIGKILL to its process group (master and workers, all started here)."""
        proc, self.proc = self.proc, None
        stop_group(proc, signal.SIGQUIT, timeout)

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
