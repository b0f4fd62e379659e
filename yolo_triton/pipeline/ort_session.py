"""ONNX Runtime session settings, shared by the served detector and the raw-model benchmark.

Sharing them is what makes the benchmark's "raw model" baseline fair: same threads, same graph
optimisation, same memory arena.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or int(os.environ.get("YOLO_ORT_THREADS", "0")) or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = True
    # Memory patterns are planned per input shape: with the dynamic batcher's ever-changing batch
    # sizes the arena kept growing in steps for minutes under load (a soak's "flat memory" failed);
    # without them the detector's memory stays flat, at the same speed (measured, batches 1-16).
    so.enable_mem_pattern = False
    # Worker threads spin while a run is active and stop the moment it returns. Spinning hands
    # each operator's work to the other cores without a futex wake. On two cores, batch 1 at
    # 320 ran 18% faster spinning (26.9 -> 22.0 ms, runs 1 ms apart), batch 8 19%. Stopping at
    # the end of the run leaves the cores to letterbox/NMS and Triton's threads between runs,
    # which is what an always-spinning pool (ONNX Runtime's default) would take from them.
    # YOLO_ORT_SPINNING=0 makes idle workers sleep between operators as well (least CPU burnt).
    spinning = os.environ.get("YOLO_ORT_SPINNING", "1") != "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
