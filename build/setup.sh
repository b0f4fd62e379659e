#!/usr/bin/env bash
# Create or refresh .venv. Re-running is cheap: a stamp records the hash of the pin files,
# and nothing is installed again unless they changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.setup-stamp"
want="$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"

nginx_present() { command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; }
prometheus_present() { command -v prometheus >/dev/null 2>&1 || [[ -x /usr/bin/prometheus ]]; }
turbojpeg_present() { ldconfig -p 2>/dev/null | grep -q 'libturbojpeg\.so'; }

ensure_apt() {
  # ensure_apt PACKAGE SERVICE PRESENT_CHECK WHAT_NEEDS_IT
  # Debian tools the project runs as its own children. A failure costs only what needs them (said
  # in one line) and does not fail the set-up.
  local pkg="$1" service="$2" present="$3" needs="$4"
  "$present" && return 0
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup: $service is not installed, so $needs is unavailable: sudo apt-get install $pkg"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: $service is not installed and there is no apt-get here, so $needs is unavailable: install $pkg"
    return 0
  fi
  echo "setup: installing $pkg (for $needs)"
  local log
  log="$(mktemp)"
  if DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >>"$log" 2>&1 \
    && "$present"; then
    echo "setup: $pkg installed"
    # Packages start their service (nginx: Debian's default site on port 80, every interface;
    # prometheus: port 9090) where services may start. The project runs its own instances with
    # their own configuration; nothing should listen that nobody asked for.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now "$service" >/dev/null 2>&1 || true; fi
    if command -v service >/dev/null 2>&1; then service "$service" stop >/dev/null 2>&1 || true; fi
  else
    echo "setup: could not install $pkg, so $needs is unavailable: $(grep -E '^(E|W):' "$log" | tail -n 1 || tail -n 1 "$log")"
  fi
  rm -f "$log"
}

ensure_tools() {
  # HTTP serving puts nginx in front of tritonserver (yolo_triton/serve/http_proxy.py: Triton's own
  # HTTP endpoint has no size, nesting or decompression limits); `make scale` balances gRPC with it.
  ensure_apt nginx-light nginx nginx_present "HTTP serving and make scale (gRPC is not affected)"
  # `make scale` scrapes the replicas with a real Prometheus (yolo_triton/perf/prometheus.py).
  ensure_apt prometheus prometheus prometheus_present "make scale"
  # tests/test_jpeg_kernels.py compares the GPU JPEG decoder's kernel with libjpeg-turbo's own
  # planes, which only its TurboJPEG library gives.
  ensure_apt libturbojpeg0 libturbojpeg turbojpeg_present "the JPEG kernel's test against libjpeg-turbo"
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  ensure_tools
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
ensure_tools
