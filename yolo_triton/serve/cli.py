"""`yolo-triton serve` (`make serve`): the launcher in the foreground, stopped cleanly.

    yolo-triton serve [--repo model_repository] [--host 127.0.0.1] [--grpc-port 8001] [--http] ...

tritonserver runs in a session of its own, so a Ctrl-C or a signal to the launcher's process
group reaches the launcher alone: on SIGINT/SIGTERM in-flight requests are drained before
tritonserver is stopped (Server.drain), and the launcher exits 0. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from yolo_triton.paths import DEFAULT_REPO
from yolo_triton.serve import keys
from yolo_triton.serve.install import LaunchError
from yolo_triton.serve.launcher import Ports, Server


def _own_terminal() -> Callable[[], None]:
    """Make this process the terminal's foreground group; returns what gives the terminal back.

    Under `make serve`, Ctrl-C would reach make as well, and make exits with an error once its
    child is done, however cleanly the child drained. As the foreground group of its own, the
    launcher alone gets the Ctrl-C, drains, and exits 0, and so does make."""
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp() or os.getpgrp() == os.getpid():
            return lambda: None
    except (OSError, ValueError):
        return lambda: None
    old = os.getpgrp()
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may not set the terminal
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:
        signal.signal(signal.SIGTTOU, previous)
        return lambda: None

    def give_back() -> None:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, old)

    return give_back


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    ap.add_argument("--host", default=env.get("HOST", "127.0.0.1"))
    ap.add_argument("--grpc-port", type=int, default=int(env.get("GRPC_PORT", 8001)))
    ap.add_argument("--http-port", type=int, default=int(env.get("HTTP_PORT", 8000)))
    ap.add_argument("--metrics-port", type=int, default=int(env.get("METRICS_PORT", 8002)))
    ap.add_argument("--http", action="store_true", default=env.get("HTTP", "") not in ("", "0"),
                    help="also serve HTTP on --http-port, behind nginx with request limits (HTTP=1)")
    ap.add_argument("--variants", default=env.get("VARIANTS", ""), help="comma-separated variant keys to load")
    args = ap.parse_args(argv)
    only = [v for v in args.variants.split(",") if v] or None
    try:
        server = Server(args.repo, Ports(args.grpc_port, args.http_port, args.metrics_port), args.host, only,
                        env.get("TRITON_API_KEY"), http=args.http, die_with_parent=True)
    except LaunchError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    print(server.describe(), flush=True)
    give_back = _own_terminal()
    ready, stopping, done = threading.Event(), threading.Event(), threading.Event()
    drained: list[bool] = []

    def shutdown() -> None:
        if server.watchdog is not None:
            server.watchdog.stop()
        if server.proxy is not None:
            server.proxy.stop()
        drained.append(server.drain())
        print(f"serve: {'in-flight requests done' if drained[0] else 'drain timed out'}; stopping tritonserver",
              file=sys.stderr, flush=True)
        if server.proc is not None:
            server.proc.send_signal(signal.SIGTERM)
        done.set()

    def on_signal(_signum: int, _frame: object) -> None:
        if stopping.is_set() or not ready.is_set():
            stopping.set()
            if server.proc is not None:
                server.proc.send_signal(signal.SIGTERM)  # a second signal, or nothing served yet: stop now
            return
        stopping.set()
        threading.Thread(target=shutdown, name="drain", daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        proc = server.spawn()
        server.wait_ready(300)
        server.start_front()
    except LaunchError as e:
        print(f"serve: {e}", file=sys.stderr)
        server.stop()
        give_back()
        return 1
    server.start_watchdog()
    ready.set()
    front = f", http {server.http_url} (nginx)" if server.http else ""
    print(f"ready on grpc {server.url}{front}, metrics {args.host}:{args.metrics_port}: "
          + ", ".join(server.plan.load), flush=True)
    code = proc.wait()
    done.wait(5)
    keys.forget(server.ports.grpc)
    give_back()
    if stopping.is_set():
        # Stopped on purpose: a clean drain and a clean exit are success, whatever Triton's own code.
        print("serve: stopped", file=sys.stderr, flush=True)
        return 0 if (drained and drained[0] and code in (0, -signal.SIGTERM)) else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
