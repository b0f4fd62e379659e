"""Faults against real servers (each test starts its own; the session server is left alone):
a killed python stub comes back, SIGTERM drains what is in flight, the client retries
UNAVAILABLE with backoff inside one deadline, and a deadline surfaces as a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
from conftest import ROOT, sample_images

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient, ServerError
from yolo_triton.serve.launcher import EXIT_TIMEOUT_S, Ports, Server, free_port
from yolo_triton.serve.watchdog import SHM_DIR, STUB_NAME, last_words

# Every python model of the CPU variants, and the ensemble whose requests go through it.
PYTHON_MODELS = {**{m: spec.variant("ort").ensemble for m in spec.variant("ort").stages},
                 spec.variant("ort_fused").pipeline: spec.variant("ort_fused").ensemble}


def photo() -> np.ndarray:
    return max(sample_images().values(), key=lambda im: im.shape[0] * im.shape[1])


def same(a, b) -> None:
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def stub_of(server_pid: int, model: str) -> psutil.Process:
    for child in psutil.Process(server_pid).children():
        try:
            args = child.cmdline()
        except psutil.Error:  # a zombie: a stub killed earlier
            continue
        if args and Path(args[0]).name == STUB_NAME and Path(args[1]).parents[1].name == model:
            return child
    raise AssertionError(f"no live python stub for {model}")


def test_killed_stubs_come_back_and_requests_succeed(repo, tmp_path):
    """Triton 2.51 leaves a killed stub dead (every request: INTERNAL "... is not healthy");
    the launcher's watchdog reloads the model, and DetectorClient retries until it is back."""
    image = photo()
    with Server(repo, log=tmp_path / "tritonserver.log") as server:
        for model, ensemble in PYTHON_MODELS.items():
            client = DetectorClient(server.url, model=ensemble, timeout_s=120, retries=20)
            expected = client.detect(image).detections
            stub = stub_of(server.proc.pid, model)
            region = SHM_DIR / stub.cmdline()[2]
            assert region.exists()
            os.kill(stub.pid, signal.SIGKILL)
            start = time.monotonic()
            same(client.detect(image).detections, expected)  # retried through the recovery
            took = time.monotonic() - start
            print(f"{model}: stub {stub.pid} killed; first answer after {took:.1f} s")
            recovered = [r for r in server.watchdog.recoveries if r.model == model and r.dead_pid == stub.pid]
            assert recovered and recovered[-1].ok, server.watchdog.recoveries
            new = stub_of(server.proc.pid, model)
            assert new.pid != stub.pid and new.is_running()
            assert not region.exists(), "the dead stub's shared memory was left in /dev/shm"
            for _ in range(3):
                same(client.detect(image).detections, expected)
            client.close()
        start = time.monotonic()
    # Triton cannot unload a model version whose stub died after requests reached it: the exit
    # waits out its timeout (and reports it) instead of hanging.
    assert server.proc.returncode is not None
    assert time.monotonic() - start < EXIT_TIMEOUT_S + 30


def test_a_dead_stubs_last_words_come_from_the_server_log_written_since(tmp_path):
    """The watchdog names why a stub died (its C++ exception, or the last line of its traceback),
    reading only what the log gained since the last death, so an old cause is never repeated."""
    log = tmp_path / "tritonserver.log"
    log.write_text("terminate called after throwing an instance of 'pybind11::error_already_set'\n"
                   "  what():  error: an earlier death\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write('I1202 06:00:00.0 1 model_lifecycle.cc:472] "loading: pipeline_gpu:1"\n'
                "terminate called after throwing an instance of 'pybind11::error_already_set'\n"
                "  what():  error: unpack_from requires a buffer of at least 3419130831 bytes\n\nAt:\n"
                "  /x/triton_python_backend_utils.py(117): deserialize_bytes_tensor\n")
    words, end = last_words(log, start)
    assert words == "what():  error: unpack_from requires a buffer of at least 3419130831 bytes"
    assert end == log.stat().st_size
    assert last_words(log, end)[0] == ""  # nothing new since: no stale cause
    with open(log, "a") as f:
        f.write("Traceback (most recent call last):\n  File \"model.py\", line 1\n"
                "torch.OutOfMemoryError: CUDA out of memory\n")
    assert last_words(log, end)[0] == "torch.OutOfMemoryError: CUDA out of memory"
    assert last_words(tmp_path / "missing.log", 0) == ("", 0)


def test_stub_killed_under_load_loses_no_request(repo, tmp_path):
    image = photo()
    with Server(repo, log=tmp_path / "tritonserver.log") as server:
        with DetectorClient(server.url, timeout_s=120) as c:
            expected = c.detect(image).detections
        results: list[object] = []
        stop = threading.Event()

        def load() -> None:
            with DetectorClient(server.url, timeout_s=120) as c:
                while not stop.is_set():
                    try:
                        results.append(c.detect(image).detections)
                    except ServerError as e:
                        results.append(e)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(2)
        assert server.plan.alias.fused  # the load goes to yolov8n: its one python model is the one to kill
        os.kill(stub_of(server.proc.pid, server.plan.alias.pipeline).pid, signal.SIGKILL)
        killed_at = len(results)
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join(180)
        errors = [r for r in results if isinstance(r, ServerError)]
        assert not errors, errors[:3]
        assert len(results) > killed_at + 3, "requests did not resume after the stub died"
        for r in results:
            same(r, expected)


def _launcher(repo: Path, ports: Ports, log: Path, how: str = "launcher") -> subprocess.Popen:
    """`make serve`'s process, `python -m yolo_triton.serve.cli`, in a process group of its own.

    how="make-tty": `make serve` itself, on a pseudo-terminal that is its controlling terminal,
    as a person runs it (Ctrl-C is then the terminal's, sent by writing ^C to it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "TRITON_API_KEY", "HTTP")}
    if how != "make-tty":
        return subprocess.Popen(
            [sys.executable, "-m", "yolo_triton.serve.cli", "--repo", str(repo), "--grpc-port", str(ports.grpc),
             "--http-port", str(ports.http), "--metrics-port", str(ports.metrics)],
            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def controlling_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        ["make", "--no-print-directory", "serve", f"REPO={repo}", f"GRPC_PORT={ports.grpc}",
         f"HTTP_PORT={ports.http}", f"METRICS_PORT={ports.metrics}"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True,
        preexec_fn=controlling_terminal)
    os.close(slave)
    proc.terminal = master  # type: ignore[attr-defined]

    def copy_output() -> None:  # the terminal's output, into the log the test reads
        with log.open("ab", buffering=0) as out:
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    return
                if not chunk:
                    return
                out.write(chunk)

    log.write_bytes(b"")
    threading.Thread(target=copy_output, daemon=True).start()
    return proc


def _stop_launcher(proc: subprocess.Popen) -> None:
    """After a failure: stop its tritonserver too (killing only the launcher would orphan it)."""
    if proc.poll() is not None:
        return
    servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "tritonserver" in p.name()]
    for s in servers:
        s.terminate()
    _, alive = psutil.wait_procs(servers, timeout=60)
    for s in alive:
        s.kill()
    for p in psutil.Process(proc.pid).children(recursive=True):
        p.kill()
    proc.kill()
    proc.wait()


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while "ready on grpc" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "launcher not ready"
        time.sleep(0.25)


STOPS = {
    "sigterm-to-launcher": lambda proc: proc.send_signal(signal.SIGTERM),
    "sigterm-to-process-group": lambda proc: os.killpg(proc.pid, signal.SIGTERM),
    "ctrl-c-on-make-serve": lambda proc: os.write(proc.terminal, b"\x03"),
}


@pytest.mark.parametrize("how", list(STOPS), ids=list(STOPS))
def test_every_way_of_stopping_drains_in_flight_requests_then_exits_0(repo, tmp_path, how):
    """tritonserver runs in a session of its own: the signal reaches the launcher (under make, the
    launcher is the terminal's foreground group, so make never sees the Ctrl-C), which drains,
    stops tritonserver, and exits 0; make then exits 0 too."""
    ports, log = Ports.free(), tmp_path / "serve.log"
    proc = _launcher(repo, ports, log, "make-tty" if how.startswith("ctrl-c") else "launcher")
    url = f"127.0.0.1:{ports.grpc}"
    try:
        _wait_ready(proc, log)
        # Small photos in full batches: the requests arrive at once (a few MB each) and still take
        # the server seconds (8 x 64 images), so they are surely in flight at the signal.
        image = cv2.resize(photo(), (160, 120))
        with DetectorClient(url, timeout_s=120) as c:
            expected = c.detect(image).detections
        batch = np.stack([image] * spec.MAX_BATCH)
        done: list[object] = []

        def big_request() -> None:
            with DetectorClient(url, timeout_s=180, retries=0) as c:
                try:
                    done.append(c.infer(batch)[0])
                except ServerError as e:
                    done.append(e)

        threads = [threading.Thread(target=big_request) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert not done, "the requests finished before the signal: make them bigger"
        signalled = time.monotonic()
        STOPS[how](proc)

        # While draining, a new request is refused at once (not queued, not hung).
        time.sleep(0.5)
        with DetectorClient(url, timeout_s=10, retries=0) as c:
            t0 = time.monotonic()
            with pytest.raises(ServerError) as err:
                c.detect(image)
            assert time.monotonic() - t0 < 3
        assert err.value.status in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE"), err.value

        for t in threads:
            t.join(240)
        rc = proc.wait(120)
        took = time.monotonic() - signalled
    finally:
        _stop_launcher(proc)
    text = log.read_text(errors="replace")
    errors = [r for r in done if isinstance(r, ServerError)]
    assert not errors and len(done) == len(threads), errors
    for dets in done:
        assert len(dets) == len(batch)
        for d in dets:
            same(d, expected)
    assert rc == 0, text[-3000:]
    assert "in-flight requests done" in text
    assert "make: ***" not in text, text[-2000:]  # make's own "make: *** [Makefile:33: serve] Interrupt"
    print(f"{how} -> exit 0 after {took:.1f} s, {len(done)} in-flight batches of {len(batch)} completed")

    # After the exit, a request fails fast with UNAVAILABLE.
    with DetectorClient(url, timeout_s=3) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerError) as err:
            c.detect(image)
    assert err.value.status == "StatusCode.UNAVAILABLE" and time.monotonic() - t0 < 5


def test_client_retries_until_the_server_comes_up(repo, tmp_path):
    server = Server(repo, log=tmp_path / "tritonserver.log")
    image = photo()
    starter = threading.Timer(2.0, server.start)
    try:
        with DetectorClient(server.url, timeout_s=240, retries=10_000, backoff_s=0.1, max_backoff_s=1.0) as c:
            t0 = time.monotonic()
            starter.start()
            assert server.proc is None  # nothing listens yet: the first attempts are refused
            det = c.detect(image).detections
            waited = time.monotonic() - t0
        assert waited > 2.0 and det.boxes.shape == (len(det.scores), 4)
        print(f"answer {waited:.1f} s after the first attempt (server started 2 s in)")
    finally:
        starter.join()
        server.stop()


def test_unreachable_server_fails_clearly_within_the_deadline():
    url = f"127.0.0.1:{free_port()}"
    with DetectorClient(url, timeout_s=3, backoff_s=0.1) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerError) as err:
            c.detect(np.zeros((8, 8, 3), np.uint8))
        took = time.monotonic() - t0
    assert err.value.status == "StatusCode.UNAVAILABLE"
    assert "attempts" in str(err.value), str(err.value)
    assert took < 3 + 1, f"{took:.1f} s for a 3 s deadline"


def test_deadline_exceeded_is_a_clear_error_and_the_server_carries_on(server):
    image = photo()
    with DetectorClient(server.url, timeout_s=0.05) as c:
        t0 = time.monotonic()
        with pytest.raises(ServerError) as err:
            c.infer(np.stack([image] * 16))
        took = time.monotonic() - t0
    assert err.value.status == "StatusCode.DEADLINE_EXCEEDED"
    assert "0.05 s deadline" in str(err.value)
    assert took < 2
    with DetectorClient(server.url, timeout_s=120) as c:
        det = c.detect(image).detections
    assert det.boxes.shape == (len(det.scores), 4)


def test_a_killed_launcher_leaves_no_tritonserver(repo, tmp_path):
    """tritonserver runs in a session of its own (a Ctrl-C must reach the launcher alone), so it is
    told to end with the launcher: SIGKILL the launcher, and tritonserver and its stubs go too."""
    ports, log = Ports.free(), tmp_path / "serve.log"
    proc = _launcher(repo, ports, log)
    try:
        _wait_ready(proc, log)
        triton = [p for p in psutil.Process(proc.pid).children() if "tritonserver" in p.name()]
        assert len(triton) == 1
        proc.kill()
        proc.wait()
        gone, alive = psutil.wait_procs(triton, timeout=60)
        assert not alive, "tritonserver outlived its launcher"
    finally:
        _stop_launcher(proc)
