"""The admin key of a running server: made per launch, kept in a file only its user can read.

Triton's model-repository, shared-memory, logging and trace APIs answer only requests that carry
this key, on every address the server binds, loopback included: whoever can load a model runs
code as the server's user, and whoever can register shared memory makes the server write into
memory by name (docs/security.md). The launcher writes the key (TRITON_API_KEY, or a fresh one)
to `<state dir>/grpc-<port>/api-key`, mode 0600 in a 0700 folder, and the project's own tools
find it from the server's port. The key itself never travels in process arguments: the launcher
passes `@@<file>@@`, which the preloaded guard (yolo_triton/guard.c) replaces inside the process.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path

API_KEY_HEADER = "x-api-key"  # HTTP header; gRPC clients send it as "triton-grpc-protocol-x-api-key"
GRPC_KEY_PREFIX = "triton-grpc-protocol-"
API_KEY_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,}")  # no ',', ':' or '=' (they split Triton's flag)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "[::1]")


class BadKey(ValueError):
    """TRITON_API_KEY is set but unusable; the message says what a good one looks like."""


def state_dir() -> Path:
    """Where launches keep their per-server files: YOLO_TRITON_STATE_DIR, else the user's runtime
    folder (XDG_RUNTIME_DIR, private by design), else ~/.cache/yolo-triton."""
    if env := os.environ.get("YOLO_TRITON_STATE_DIR"):
        return Path(env)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "yolo-triton"
    return Path.home() / ".cache" / "yolo-triton"


def server_dir(grpc_port: int) -> Path:
    return state_dir() / f"grpc-{grpc_port}"


def private_dir(path: Path) -> Path:
    """`path`, created if needed, readable by this user alone."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> Path:
    """A file only this user can read, written without a moment of wider permissions."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)
    return path


def new_key() -> str:
    return secrets.token_urlsafe(32)


def checked_key(key: str) -> str:
    if not API_KEY_PATTERN.fullmatch(key):
        raise BadKey(
            "TRITON_API_KEY must be at least 16 characters of A-Z a-z 0-9 . _ ~ - "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return key


def key_file(grpc_port: int) -> Path:
    return server_dir(grpc_port) / "api-key"


def secret_token(path: Path) -> str:
    """What stands for a secret in a process argument; the guard swaps in the file's first line."""
    return f"@@{path}@@"


def _port(url: str) -> tuple[str, int] | None:
    url = url.split("://", 1)[-1].rstrip("/")
    host, _, port = url.rpartition(":")
    return (host, int(port)) if port.isdigit() else None


def read_key(url: str) -> str | None:
    """The admin key for the server at `url` (host:port of its gRPC endpoint): TRITON_API_KEY if
    set, else the launch's key file when the server runs on this host and this user started it."""
    if env := os.environ.get("TRITON_API_KEY"):
        return env
    parsed = _port(url)
    if parsed is None or parsed[0] not in LOCAL_HOSTS:
        return None
    with contextlib.suppress(OSError):
        return key_file(parsed[1]).read_text().strip() or None
    return None


def key_headers(api_key: str | None) -> dict[str, str] | None:
    """gRPC headers for the restricted APIs (Triton prefixes the key's header name on gRPC)."""
    return {GRPC_KEY_PREFIX + API_KEY_HEADER: api_key} if api_key else None


def headers_for(url: str) -> dict[str, str] | None:
    """gRPC headers that open the restricted APIs of the server at `url`, or None if unknown."""
    return key_headers(read_key(url))


def forget(grpc_port: int) -> None:
    """Remove a stopped server's files (its key among them)."""
    shutil.rmtree(server_dir(grpc_port), ignore_errors=True)
