"""A real Prometheus that scrapes every replica's metrics port and records the autoscaler's signal.

The signal is Triton's queue time per request (spec.QUEUE_PER_REQUEST_RULE): the rate of
spec.TRITON_QUEUE_METRIC over the rate of spec.TRITON_SUCCESS_METRIC, on the models where
requests wait (spec.QUEUED_MODELS: the python model that runs the network, behind the ensemble
clients call). `queue_per_request` renders that expression once for every place it is used: the
recording rule here, the whole-run figure `yolo-triton scale` prints, and (with
prometheus-adapter's placeholders) the adapter rule in deploy/k8s, which a test compares.

Prometheus runs in a session of its own with its data in the run's folder, and is stopped with
it; Debian's package (`prometheus`, 2.42) is what `make setup` installs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from yolo_triton import spec
from yolo_triton.serve.install import stop_group

SCRAPE_S = 1  # every replica is scraped every second, so a run of 20 s has 20 points per replica
RULE_WINDOW = "10s"  # the recorded rule's rate window here (a cluster scrapes slower: deploy/k8s uses 1m)
CLUSTER_WINDOW, CLUSTER_BY = "1m", "namespace, pod"  # deploy/k8s/prometheus-rule.yaml's rule
IDLE_RATE = "1e-9"  # requests/s below which a replica counts as idle
INSTALL_HINT = "apt-get install prometheus (as root; `make setup` does it)"
JOB = "triton"


class PrometheusUnavailable(RuntimeError):
    """Prometheus cannot run here, or did not come up; the message says what to do."""


def find_prometheus() -> Path:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else "")
    if not found:
        raise PrometheusUnavailable(f"Prometheus is not installed: {INSTALL_HINT}")
    return Path(found)


def queue_per_request(window: str, matchers: str = "", by: str = "") -> str:
    """The autoscaling signal as PromQL: queue microseconds per answered request over `window`.

    `matchers` are extra label matchers (prometheus-adapter's `<<.LabelMatchers>>`), `by` the
    grouping labels (`instance` here, `<<.GroupBy>>` for the adapter); none: one figure for all."""
    labels = f'model=~"{spec.QUEUED_MODELS}"' + (f",{matchers}" if matchers else "")
    group = f" by ({by})" if by else ""
    # An idle replica has no requests: clamped, its queue reads 0 rather than 0/0 (NaN, no value).
    return (f"sum{group}(rate({spec.TRITON_QUEUE_METRIC}{{{labels}}}[{window}]))"
            f" / clamp_min(sum{group}(rate({spec.TRITON_SUCCESS_METRIC}{{{labels}}}[{window}])), {IDLE_RATE})")


def queue_over(start: float, end: float) -> str:
    """Queue microseconds per request over [start, end] (unix seconds), to be evaluated at `end`.
    A ratio of rates over one window is the ratio of the increases, and increase() follows counter
    resets, so a replica that was killed and restarted counts in full."""
    return queue_per_request(f"{max(round(end - start), 1)}s")


def config(targets: Sequence[str], rules: Path) -> str:
    """prometheus.yml: one job scraping every replica's metrics port each SCRAPE_S."""
    return json.dumps({  # JSON is YAML, and needs no YAML library
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }, indent=1)


def rules() -> str:
    """The recording rule the HPA's metric is made of, per replica (deploy/k8s records the same
    expression per pod, over CLUSTER_WINDOW)."""
    return json.dumps({"groups": [{"name": "yolo_triton", "interval": f"{SCRAPE_S}s", "rules": [
        {"record": spec.QUEUE_PER_REQUEST_RULE, "expr": queue_per_request(RULE_WINDOW, by="instance")},
    ]}]}, indent=1)


class Prometheus:
    """prometheus on 127.0.0.1:port scraping `targets` (host:port of metrics endpoints)."""

    def __init__(self, port: int, targets: Sequence[str], state_dir: Path) -> None:
        self.port = port
        self.targets = list(targets)
        self.state_dir = Path(state_dir).resolve()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        binary = find_prometheus()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "rules.yml").write_text(rules())
        (self.state_dir / "prometheus.yml").write_text(config(self.targets, self.state_dir / "rules.yml"))
        with open(self.state_dir / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), f"--config.file={self.state_dir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.state_dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusUnavailable(f"prometheus exited with code {self.proc.returncode} "
                                            f"(log: {self.state_dir / 'prometheus.log'})")
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.2)
        self.stop()
        raise PrometheusUnavailable(f"prometheus not ready on {self.url} within {timeout:.0f}s")

    def query(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """An instant query through the HTTP API: (labels, value) of each series."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"query {expr!r} failed: {body.get('error')}")
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    def scalar(self, expr: str, at: float | None = None) -> float:
        """The one value of `expr` (NaN when it has none)."""
        got = self.query(expr, at)
        return got[0][1] if got else math.nan

    def wait_for_scrape(self, target: str, timeout: float = 5.0) -> bool:
        """Until Prometheus holds a scrape of `target` (host:port) taken after this call; False
        when none came within `timeout`. Read right after, a replica's own figures and its scraped
        ones cover the same requests, less the few that end between the two reads."""
        asked = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scalar(f'timestamp(up{{job="{JOB}",instance="{target}"}})') > asked:
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        stop_group(proc, signal.SIGTERM, timeout)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
