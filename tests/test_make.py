"""The front door: every measurement target passes URL= on in one way, and `make help` lists the
variables. `make -n` prints the commands a target runs without running them."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
MEASURING = ("perf", "locust", "compare", "eval", "bench-cpu")


def make(*args: str) -> str:
    out = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("target", MEASURING)
def test_every_measurement_target_passes_url_on(target):
    commands = [line for line in make("-n", target, "URL=10.1.2.3:9001").splitlines()
                if f"yolo-triton {target}" in line]
    assert len(commands) == 1 and commands[0].rstrip().endswith("--url 10.1.2.3:9001"), commands
    without = [line for line in make("-n", target).splitlines() if f"yolo-triton {target}" in line]
    assert "--url" not in without[0]


def test_make_help_lists_the_variables():
    text = make("help")
    targets, variables = text.split("variables (make TARGET VAR=value):")
    assert "bench-cpu" in targets and "its own server" in targets
    names = [line.split()[0] for line in variables.strip().splitlines()]
    assert {"URL", "MODEL", "WEIGHTS", "IMGSZ", "HTTP", "VARIANTS", "GRPC_PORT", "DATA", "CONCURRENCY",
            "CALIB_IMAGES"} <= set(names)
    url = next(line for line in variables.splitlines() if line.startswith("URL"))
    assert all(t in url for t in ("perf", "locust", "compare", "eval", "bench-cpu"))
