"""The server's memory while it is loaded: tritonserver plus its python stubs, sampled in a thread.

The soak's verdict on leaks rests on these figures. The proportional set size (PSS) splits
shared pages between the processes that map them, so the stubs' shared memory with the server
is counted once, not once per stub as the resident set size (RSS) would.
"""

from __future__ import annotations

import statistics
import threading
import time

MB = 1 << 20


class MemorySampler:
    """PSS and RSS of a process and its children, every `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, float, float, int]] = []  # (t, pss MB, rss MB, processes)
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[float, float, float, int]:
        import psutil

        pss = rss = 0
        procs = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                m = p.memory_full_info()
            except psutil.Error:  # a zombie (a stub that died) or one that just exited
                continue
            pss, rss, procs = pss + m.pss, rss + m.rss, procs + 1
        row = (time.monotonic() - self._start, pss / MB, rss / MB, procs)
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the server went away: the run reports it elsewhere
                return

    def start(self) -> MemorySampler:
        self._start = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()


def memory_figures(samples: list[tuple[float, float, float, int]], warmup_s: float) -> dict[str, float]:
    """PSS figures (MB): at the start, peak, and over the judged window (after warm-up) the medians
    of its first and last thirds; growth is their difference. Medians, because PSS under load
    swings by tens of MB with the requests in flight; a leak moves the whole last third."""
    pss = [s[1] for s in samples]
    judged = [s[1] for s in samples if s[0] >= warmup_s] or pss[-1:]
    third = max(len(judged) // 3, 1)
    baseline, end = statistics.median(judged[:third]), statistics.median(judged[-third:])
    return {"start_mb": pss[0], "after_warmup_mb": baseline, "end_mb": end, "peak_mb": max(pss),
            "growth_mb": end - baseline, "start_rss_mb": samples[0][2], "end_rss_mb": samples[-1][2],
            "samples": len(samples)}


def find_server_pid(url: str) -> int | None:
    """The process listening on the url's port (psutil may need privileges to see it)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except psutil.Error:
        return None
    return None
