"""nginx in front of Triton's HTTP endpoint, enforcing the limits Triton 2.51 lacks.

Triton's HTTP front end parses JSON without a nesting limit and inflates gzip/deflate bodies
without a size limit. Measured on tritonserver 2.51: an infer body of 300,000 `[` (100,000 is
still answered with a parse error) segfaults the server, and a 3.4 MB gzip body that inflates to
768 MB adds 1.5 GB of resident memory. So HTTP is served only through this proxy: Triton listens on
127.0.0.1 on a private port and answers (`--http-restricted-api=...:x-yolo-proxy-key=<key>`) only
requests carrying a per-launch proxy key, a header Triton checks before it parses or inflates the
body; nginx adds that header to each request it has checked:

- the body is at most `max_body_bytes`, and nginx holds all of it before Triton sees a byte;
- no Content-Encoding (nothing for Triton to inflate), and no Transfer-Encoding but chunked;
- the JSON Triton parses is small: at most 9999 bytes in a binary-tensor request (the
  Inference-Header-Content-Length header), at most 32 KiB for a JSON-only request;
- no `Origin` header: browsers send it on cross-site requests, and Triton accepts text/plain
  bodies from any origin, so a web page could otherwise drive the API from a visitor's browser.

Each refusal answers JSON `{"error": ...}` naming the limit and what to do instead.
"""

from __future__ import annotations

import http.client
import re
from pathlib import Path

from yolo_triton.serve import nginx
from yolo_triton.serve.nginx import INSTALL_HINT, SBIN_NGINX, ProxyUnavailable, bracket

__all__ = ["INSTALL_HINT", "SBIN_NGINX", "HttpProxy", "ProxyUnavailable", "find_nginx"]

PROXY_KEY_HEADER = "x-yolo-proxy-key"
# A 64-image batch (spec.MAX_BATCH) of 1080p photos as binary UINT8 tensors is
# 64 * 1920 * 1080 * 3 = 398 MB (380 MiB) plus a JSON header of at most 9999 bytes.
DEFAULT_MAX_BODY = 400 * 1024 * 1024
# A JSON-only body (no Inference-Header-Content-Length) is parsed whole by Triton. 32 KiB of `[` is
# 32,768 levels, far below the 300,000 that crash tritonserver 2.51 (100,000 still get a parse
# error); tensors of any size belong in the binary part.
MAX_JSON_BODY = "32k"
MAX_JSON_HEADER_DIGITS = 4  # Inference-Header-Content-Length <= 9999: the JSON part of a binary request
# Goes into the nginx config and Triton's flag: no quotes, ';', '$', ',', ':' or '='.
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,}")


def find_nginx() -> Path:
    """The nginx binary (serve.nginx.find_nginx), or ProxyUnavailable saying what to install."""
    return nginx.find_nginx("HTTP serving in front of tritonserver")


def _check_key(key: str) -> None:
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError("the proxy key must be at least 16 characters of A-Z a-z 0-9 . _ ~ - "
                         "(e.g. secrets.token_urlsafe(32))")


def _error(code: int, message: str) -> str:
    """An nginx `return` answering JSON; `'` and `$` would end the string or expand a variable."""
    assert "'" not in message and "$" not in message and '"' not in message, message
    return f"return {code} '{{\"error\":\"{message}\"}}\\n';"


UPSTREAM_DOWN = _error(502, "tritonserver behind the HTTP proxy is not answering: retry, or check the server")
BAD_TRANSFER_ENCODING = _error(501, "Transfer-Encoding other than chunked is not accepted: send the body "
                                    "uncompressed, with Content-Length or chunked")
ORIGIN = _error(403, "requests with an Origin header are refused: browsers send it on cross-site requests and "
                     "this API must not be driven from web pages; call it from a program, without Origin")
CONTENT_ENCODING = _error(415, "Content-Encoding is not accepted: send the body uncompressed "
                               "(no Content-Encoding header)")
JSON_HEADER = _error(400, f"Inference-Header-Content-Length must be a number of at most {MAX_JSON_HEADER_DIGITS} "
                          "digits: the JSON part of a binary-tensor request is limited to 9999 bytes; put tensor "
                          "data in the binary part")
JSON_TOO_LARGE = _error(413, "JSON-only request bodies are limited to 32 KiB: send tensors as binary data "
                             "(Inference-Header-Content-Length; tritonclient.http does so by default)")
NOT_FOUND = _error(404, "not found: this proxy serves the KServe v2 API under /v2/")

CONFIG = """\
# Rendered by yolo_triton.http_proxy for one launch. It holds the proxy key: mode 0600.
%(main)s

http {
    server_tokens off;
    access_log off;
    default_type application/json;

%(temp_paths)s

    client_max_body_size %(max_body)d;
    client_body_buffer_size 1m;  # bodies beyond it wait in temp/client_body until complete
    # Slow clients: these bound the time between two reads/writes, not the whole transfer.
    client_header_timeout 10s;
    client_body_timeout 30s;
    send_timeout 60s;
    keepalive_timeout 60s;

    upstream triton {
        server 127.0.0.1:%(upstream)d;
        keepalive 16;
    }

    proxy_http_version 1.1;
    proxy_request_buffering on;  # Triton sees nothing until nginx holds the whole, checked body
    proxy_connect_timeout 5s;
    proxy_send_timeout 300s;
    proxy_read_timeout 300s;  # a 64-image batch on a CPU takes minutes
    proxy_set_header Connection "";
    # Only what was checked reaches Triton: no Content-Encoding at all (nginx 1.22 variables see the
    # first of repeated headers only), and one Inference-Header-Content-Length, the checked one.
    proxy_set_header Content-Encoding "";
    proxy_set_header Inference-Header-Content-Length $http_inference_header_content_length;
    proxy_set_header %(key_header)s "%(key)s";  # replaces any the client sent

    server {
        listen %(listen)s;
        %(errors)s

        if ($http_origin != "") {
            %(origin)s
        }
        if ($http_content_encoding !~* "^(identity)?$") {
            %(content_encoding)s
        }
        if ($http_inference_header_content_length !~ "^[0-9]{0,%(digits)d}$") {
            %(json_header)s
        }
        # No binary part: the whole body is JSON, so it gets the JSON limit.
        if ($http_inference_header_content_length = "") {
            rewrite ^ /_json$uri last;
        }

        # Regex locations: a prefix ending in / would answer /v2 (server metadata) with a redirect.
        location ~ ^/v2(/|$) {
            proxy_pass http://triton;
        }
        location ~ ^/_json/v2(/|$) {
            internal;
            client_max_body_size %(max_json)s;
            error_page 413 @json_too_large;
            %(errors_but_413)s
            proxy_pass http://triton$request_uri;
        }
        location / {
            %(not_found)s
        }
        location @too_large {
            %(too_large)s
        }
        location @json_too_large {
            %(json_too_large)s
        }
        location @bad_transfer_encoding {
            %(bad_transfer_encoding)s
        }
        location @upstream_down {
            %(upstream_down)s
        }
    }
}
"""
ERRORS_BUT_413 = "error_page 501 @bad_transfer_encoding; error_page 502 503 504 @upstream_down;"


class HttpProxy(nginx.NginxProcess):
    """nginx on listen_host:listen_port in front of Triton's HTTP endpoint on 127.0.0.1:upstream_port.

    `state_dir` is the proxy's own (made 0700): config, pid, error log and body temp files.
    nginx runs in a session of its own (serve.nginx.NginxProcess), so a Ctrl-C meant for the
    launcher does not cut HTTP requests in flight. With `die_with_parent` (the launcher) it gets
    SIGTERM when the thread that called start() ends, so a killed launcher leaves no nginx holding
    the port.
    """

    name = "nginx (the HTTP proxy)"

    def __init__(self, listen_host: str, listen_port: int, upstream_port: int, proxy_key: str,
                 state_dir: Path, max_body_bytes: int = DEFAULT_MAX_BODY, die_with_parent: bool = False) -> None:
        _check_key(proxy_key)
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive (nginx reads 0 as no limit)")
        super().__init__(state_dir, die_with_parent)
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.proxy_key = proxy_key
        self.max_body_bytes = max_body_bytes

    @property
    def url(self) -> str:
        """host:port for clients (a wildcard listen address is reached on loopback)."""
        return f"{bracket(self._client_host)}:{self.listen_port}"

    @property
    def _client_host(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.listen_host, self.listen_host)

    def render(self) -> str:
        """The nginx configuration, for this user and these ports."""
        state = self.state
        too_large = _error(413, f"request body over the proxy limit of {self.max_body_bytes} bytes: send fewer or "
                                "smaller images per request")
        return CONFIG % {
            "main": nginx.main_context(state), "state": state, "temp_paths": nginx.temp_paths(state),
            "max_body": self.max_body_bytes, "upstream": self.upstream_port,
            "key_header": PROXY_KEY_HEADER, "key": self.proxy_key,
            "listen": f"{bracket(self.listen_host or '0.0.0.0')}:{self.listen_port}",
            "errors": "error_page 413 @too_large; " + ERRORS_BUT_413, "errors_but_413": ERRORS_BUT_413,
            "origin": ORIGIN, "content_encoding": CONTENT_ENCODING, "json_header": JSON_HEADER,
            "digits": MAX_JSON_HEADER_DIGITS, "max_json": MAX_JSON_BODY, "not_found": NOT_FOUND,
            "too_large": too_large, "json_too_large": JSON_TOO_LARGE,
            "bad_transfer_encoding": BAD_TRANSFER_ENCODING, "upstream_down": UPSTREAM_DOWN,
        }

    def _answers(self) -> bool:
        """Any HTTP answer (here our 404) means a worker is serving, not just that the socket is bound."""
        conn = http.client.HTTPConnection(self._client_host, self.listen_port, timeout=1)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def start(self, timeout: float = 10.0) -> HttpProxy:
        super().start(timeout)
        return self

    def __enter__(self) -> HttpProxy:
        return self.start()
