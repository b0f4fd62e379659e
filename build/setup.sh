#!/usr/bin/env bash
# Create or refresh .venv. Re-running is cheap: a stamp records the hash of the pin files,
# and nothing is installed again unless they changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.setup-stamp"
want="$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
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
