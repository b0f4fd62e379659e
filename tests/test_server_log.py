"""A CPU machine's tritonserver log holds no CUDA error lines that only say there is no GPU."""

from __future__ import annotations

import re

import pytest

from yolo_triton.serve import log_filter

GPU_WORDS = re.compile(r"CUDA|Cuda|NVML|DCGM|pinned system memory")


def test_cpu_server_log_has_no_cuda_lines(server, client):
    if server.gpu:
        pytest.skip("a GPU is visible here: tritonserver's CUDA lines are real information")
    client.detect(next(iter(__import__("conftest").sample_images().values())))
    lines = server.log.read_text().splitlines()
    assert lines[0] == log_filter.NOTE.decode().rstrip("\n")
    assert [line for line in lines[1:] if GPU_WORDS.search(line)] == []
    assert any("Started GRPCInferenceService" in line for line in lines), "the rest of the log is kept"


def test_log_filter_drops_only_the_cpu_only_messages():
    noise = [
        b'E1202 00:54:27.975100 10556 server.cc:241] "CudaDriverHelper has not been initialized."\n',
        b'E1202 00:54:30.397623 10556 ensemble_scheduler.cc:1468] "unable to create stream for yolov8n: CUDA driver '
        b'version is insufficient for CUDA runtime version"\n',
        b"Error: Failed to initialize NVML\n",
        b'W1202 00:54:30.398832 10556 metrics.cc:798] "DCGM unable to start: DCGM initialization error"\n',
    ]
    real = [
        b'E1202 00:55:00.000000 10556 model_lifecycle.cc:641] "failed to load \'detector_ort\' version 1"\n',
        b'E1202 00:55:00.000000 10556 ensemble_scheduler.cc:1468] "unable to create stream for yolov8n: out of '
        b'memory"\n',
    ]
    assert all(log_filter.is_cpu_only_noise(line) for line in noise)
    assert not any(log_filter.is_cpu_only_noise(line) for line in real)
