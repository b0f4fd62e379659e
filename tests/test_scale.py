"""`yolo-triton scale`, short: 2 real tritonserver replicas behind nginx, a real Prometheus, Locust
through the balancer, one replica killed and restarted. No request fails, Prometheus' queue time
per request agrees with Triton's statistics within 10%, and nothing it started outlives it,
whether it finishes or is interrupted."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT

from yolo_triton.perf.prometheus import PrometheusUnavailable, find_prometheus
from yolo_triton.serve.nginx import ProxyUnavailable, find_nginx

DURATION_S = 20
LINE = re.compile(r"^scale: (\d+) replicas, (\d+) requests, (\d+) failed, "
                  r"queue_us_per_request=([0-9.]+) \(prometheus\) vs ([0-9.]+) \(triton statistics\)$", re.M)
PROCESS_NAMES = {"tritonserver": "tritonserver", "nginx": "nginx", "prometheus": "prometheus", "locust": "python"}


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    try:
        find_nginx()
        find_prometheus()
    except (ProxyUnavailable, PrometheusUnavailable) as e:
        pytest.skip(f"make scale needs nginx and Prometheus: {e}")


def scale_command(repo: Path, runs: Path, duration: int = DURATION_S) -> list[str]:
    return [sys.executable, "-m", "yolo_triton.cli", "scale", "--repo", str(repo), "--replicas", "2",
            "--duration", str(duration), "--runs-dir", str(runs)]


def survivors(run: Path) -> list[str]:
    """Processes of processes.json still running (a reused pid with another name is not ours)."""
    started = json.loads((run / "processes.json").read_text())
    alive = []
    for kind, pids in started.items():
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and PROCESS_NAMES[kind] in proc.name():
                    alive.append(f"{kind} {pid}")
            except psutil.NoSuchProcess:
                continue
    return alive


def test_a_replica_killed_under_load_costs_no_request_and_prometheus_agrees(repo, tmp_path):
    out = subprocess.run(scale_command(repo, tmp_path), capture_output=True, text=True, cwd=ROOT,
                         timeout=DURATION_S + 400)
    print(out.stdout[-3000:], out.stderr[-2000:])
    found = LINE.findall(out.stdout)
    assert found, f"no result line (exit {out.returncode}): {out.stdout[-1500:]} {out.stderr[-1500:]}"
    assert out.stdout.rstrip().splitlines()[-1].startswith("scale: 2 replicas,")  # the line ends the run
    replicas, requests, failed, from_prometheus, from_triton = found[-1]
    assert int(replicas) == 2 and int(requests) > 20
    assert int(failed) == 0
    p, t = float(from_prometheus), float(from_triton)
    assert p > 0 and t > 0
    assert abs(p - t) <= 0.10 * max(p, t), (p, t)
    assert out.returncode == 0, out.stderr
    (run,) = tmp_path.glob("scale/*")
    summary = json.loads((run / "summary.json").read_text())
    events = [e["event"] for e in summary["events"]]
    assert any(e.startswith("killing replica 1") for e in events) and "replica 1 ready again" in events, events
    # the killed replica's first life and its second are both in Triton's figures
    assert [i["replica"] for i in summary["incarnations"]].count(1) == 2, summary["incarnations"]
    assert len(summary["balancer"]["answered_by"]) == 2 and summary["recorded_rule"]
    assert not survivors(run)


def test_an_interrupted_run_leaves_no_process_behind(repo, tmp_path):
    # Ctrl-C as a terminal delivers it. A shell's background job inherits SIGINT ignored, and Python
    # then keeps it ignored, so the child gets the default disposition back whatever ran the tests.
    proc = subprocess.Popen(scale_command(repo, tmp_path, duration=60), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    try:
        deadline = time.monotonic() + 300
        for text in proc.stdout:
            seen.append(text)
            if text.startswith("scale: Locust,") or time.monotonic() > deadline:
                break
        assert any(t.startswith("scale: Locust,") for t in seen), "".join(seen)
        time.sleep(3)  # Locust is running, the replicas serving
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest and "interrupted" in rest, rest
    (run,) = tmp_path.glob("scale/*")
    started = json.loads((run / "processes.json").read_text())
    assert len(started["tritonserver"]) == 2 and started["nginx"] and started["prometheus"] and started["locust"]
    assert not survivors(run)


def test_the_ports_of_a_run_are_all_different():
    """Replicas, balancer and Prometheus take their ports before any of them binds one: the kernel
    may offer a released port again, and a run once gave one replica's metrics port to another's
    gRPC (the second replica then refused connections)."""
    from yolo_triton.serve.launcher import Ports

    ports = [p for _ in range(150) for p in vars(Ports.free()).values()]
    assert len(set(ports)) == len(ports) == 450
