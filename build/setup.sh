#!/usr/bin/env bash
# Create or refresh .venv. Re-running is cheap: a stamp records the hash of the pin files,
# and nothing is installed again unless they changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.setup-stamp"
want="$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"

nginx_present() { command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; }

ensure_nginx() {
  # HTTP serving puts nginx in front of tritonserver (yolo_triton/http_proxy.py: Triton's own HTTP
  # endpoint has no size, nesting or decompression limits). gRPC needs nothing from it, so a
  # failure here costs HTTP only and does not fail the set-up.
  nginx_present && return 0
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup: nginx is not installed, so HTTP serving is unavailable (gRPC is not affected): sudo apt-get install nginx-light"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: nginx is not installed and there is no apt-get here, so HTTP serving is unavailable: install nginx"
    return 0
  fi
  echo "setup: installing nginx-light (the HTTP front for tritonserver)"
  local log
  log="$(mktemp)"
  if DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >>"$log" 2>&1 && nginx_present; then
    echo "setup: nginx installed"
    # The package starts Debian's default site (port 80, every interface) where services may start.
    # The project runs its own nginx per server; nothing should listen that nobody asked for.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
    if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
  else
    echo "setup: could not install nginx-light, so HTTP serving is unavailable: $(grep -E '^(E|W):' "$log" | tail -n 1 || tail -n 1 "$log")"
  fi
  rm -f "$log"
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  ensure_nginx
  exit 0
fi

pick_python() {
  # torch 2.14.1 wheels for 3.11 are the ones most mirrors carry; 3.10 and 3.12 work too.
  for p in ${PYTHON:-} python3.11 python3.12 python3.10 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
      echo "$p"; return 0
    fi
  done
  echo "setup: need Python 3.10-3.12 (the Triton python-backend stubs exist for those only)" >&2
  return 1
}

if [[ ! -x "$venv/bin/python" ]]; then
  py="$(pick_python)"
  echo "setup: creating $venv with $($py --version)"
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
echo "setup: installing pinned dependencies (first run downloads a few GB)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -c requirements.lock
# nvidia-pytriton is taken for the tritonserver binary it bundles, not for its Python API:
# its declared deps (numpy<2, tritonclient[http]) would undo the pins above.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
echo "$want" > "$stamp"
echo "setup: $venv ready"
ensure_nginx
