"""nginx as the gRPC load balancer in front of several tritonserver replicas (`GrpcBalancer`).

What a Kubernetes Service with an L7 proxy does for the pods, on one machine: nginx terminates
each client's HTTP/2 connection and spreads the *requests* over the replicas (round robin), so a
client's long-lived gRPC connection does not pin all its traffic to one replica, the pain of
gRPC keep-alive behind an L4 balancer (Triton issues 6177 and 4036). A replica that refuses or
drops a connection is marked failed (`max_fails=1`) and left out for `fail_timeout`. A request it
refused goes to the next replica (`grpc_next_upstream`). One it had in flight cannot: nginx
streams gRPC request bodies to the replica and keeps no copy to resend, so it answers 502, which
the client sees as UNAVAILABLE and retries (yolo_triton.client.detector.retryable; the Locust
users' --triton-retries). Together, clients see no failed request while a replica is lost.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from pathlib import Path

from yolo_triton.serve import nginx
from yolo_triton.serve.http_proxy import DEFAULT_MAX_BODY

FAIL_TIMEOUT_S = 2  # how long a failed replica is left out before nginx tries it again
CONNECT_TIMEOUT_S = 1  # a replica that does not accept within this is failed over
READ_TIMEOUT_S = 300  # a 64-image batch on a CPU takes minutes

CONFIG = """\
# Rendered by yolo_triton.perf.balancer for one run.
%(main)s

http {
    server_tokens off;
    log_format replicas '$msec $upstream_addr $upstream_status $status $request_time';
    access_log %(state)s/access.log replicas;
%(temp_paths)s
    client_max_body_size %(max_body)d;
    client_body_buffer_size 4m;  # a photo's request stays in memory, not in a temp file

    upstream replicas {
%(servers)s
        keepalive 32;
    }

    server {
        listen %(listen)s http2;
        location / {
            grpc_pass grpc://replicas;
            grpc_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
            grpc_next_upstream_tries %(tries)d;
            grpc_connect_timeout %(connect)ds;
            grpc_send_timeout %(read)ds;
            grpc_read_timeout %(read)ds;
        }
    }
}
"""


class GrpcBalancer(nginx.NginxProcess):
    """nginx on 127.0.0.1:listen_port balancing gRPC over the replicas at 127.0.0.1:upstream_ports."""

    name = "nginx (the gRPC balancer)"

    def __init__(self, listen_port: int, upstream_ports: Sequence[int], state_dir: Path) -> None:
        if not upstream_ports:
            raise ValueError("the balancer needs at least one replica")
        super().__init__(state_dir)
        self.listen_port = listen_port
        self.upstream_ports = list(upstream_ports)

    @property
    def url(self) -> str:
        """host:port of the gRPC front, for clients."""
        return f"127.0.0.1:{self.listen_port}"

    @property
    def access_log(self) -> Path:
        """One line per request: time, the replica(s) tried, their status, nginx's status, seconds."""
        return self.state_dir / "access.log"

    def render(self) -> str:
        state = self.state
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;"
                            for p in self.upstream_ports)
        return CONFIG % {
            "main": nginx.main_context(state), "state": state, "temp_paths": nginx.temp_paths(state),
            "max_body": DEFAULT_MAX_BODY, "servers": servers, "tries": len(self.upstream_ports),
            "listen": self.url, "connect": CONNECT_TIMEOUT_S, "read": READ_TIMEOUT_S,
        }

    def _answers(self) -> bool:
        """The listening socket accepts (nginx holds it once its pid file is written)."""
        try:
            with socket.create_connection(("127.0.0.1", self.listen_port), timeout=1):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> GrpcBalancer:
        super().start(timeout)
        return self


def routed(access_log: Path) -> dict:
    """What the access log says: requests answered per replica, and the ones nginx answered 502
    (the replica was lost with the request in flight: the client retries those)."""
    by_replica: dict[str, int] = {}
    bad_gateway = 0
    with contextlib.suppress(OSError), access_log.open() as f:
        for row in f:
            fields = row.split()
            if len(fields) < 4:
                continue
            if fields[3] == "502":
                bad_gateway += 1
            elif fields[3] == "200":
                last = fields[1].split(",")[-1].strip()  # the replica that answered, after any it failed over
                by_replica[last] = by_replica.get(last, 0) + 1
    return {"answered_by": by_replica, "bad_gateway": bad_gateway}
