"""What users type as a server address, and what a failed connection most likely means.

`--url` takes `HOST:PORT`, `grpc://HOST:PORT` and `grpc://HOST:PORT/MODEL` (the form Ultralytics'
client uses); an `http(s)://` address is refused with the fix, since this client speaks gRPC. A
connection that fails the way a non-gRPC port fails ("Socket closed", a protocol error) names
the gRPC port, and an unknown model lists the models the server has ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from yolo_triton.pipeline.validation import InputError

DEFAULT_GRPC_PORT = 8001
# How gRPC fails when the port answers another protocol (nginx's HTTP, the metrics endpoint).
NOT_GRPC_SIGNS = ("Socket closed", "Trying to connect an http1.x server", "Connection reset by peer",
                  "failed to connect to all addresses; last error: UNKNOWN")


@dataclass(frozen=True)
class Endpoint:
    address: str  # HOST:PORT, as tritonclient.grpc takes it
    model: str | None  # named in the URL's path, if it was


def parse(url: str) -> Endpoint:
    """An --url as typed -> the gRPC address (and a model named in its path)."""
    text = url.strip()
    if "://" not in text:
        return Endpoint(text.rstrip("/"), None)
    parts = urlsplit(text)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or "HOST"
        raise InputError(f"--url {url}: this client speaks gRPC, not HTTP: give the gRPC port, e.g. --url "
                         f"{host}:{DEFAULT_GRPC_PORT} or grpc://{host}:{DEFAULT_GRPC_PORT} (HTTP, with HTTP=1, "
                         "is for curl and tritonclient.http)")
    if parts.scheme != "grpc" or not parts.netloc:
        raise InputError(f"--url {url}: expected HOST:PORT or grpc://HOST:PORT[/MODEL]")
    model = parts.path.strip("/").split("/", 1)[0] or None
    return Endpoint(parts.netloc, model)


def looks_like_wrong_port(message: str) -> bool:
    return any(sign in message for sign in NOT_GRPC_SIGNS)


def wrong_port_hint(address: str) -> str:
    return (f"{address} does not answer gRPC: is it the HTTP or metrics port? `make serve` listens for gRPC on "
            f"GRPC_PORT (default {DEFAULT_GRPC_PORT}); pass that port with --url")
