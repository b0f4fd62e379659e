"""A short soak (yolo_triton.perf.soak) against its own real server: Locust at about twice the saturated
rate, every reply checked, no unexpected error, the server's memory flat after warm-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

DURATION_S = 75


@pytest.mark.slow
def test_soak_at_twice_the_saturated_rate(repo, tmp_path):
    cmd = [sys.executable, "-m", "yolo_triton.perf.soak", "--repo", str(repo), "--duration", str(DURATION_S),
           "--warmup-frac", "0.3", "--runs-dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=DURATION_S + 600)
    print(out.stdout[-3000:])
    summaries = list(tmp_path.glob("soak/*/summary.json"))
    assert summaries, f"no summary (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}"
    s = json.loads(summaries[0].read_text())
    assert s["locust"]["requests"] > 0
    assert s["unexpected_errors"] == 0 and s["locust"]["failures"] == 0, s["failures_by_type"]
    assert s["saturation"]["rate"] > 0 and s["offered_rate"] >= 1.9 * s["saturation"]["rate"]
    mem = s["memory"]
    assert mem is not None and mem["samples"] >= 10
    assert mem["growth_mb"] <= s["max_growth_mb"], mem
    assert out.returncode == 0 and s["passed"], s["problems"]
