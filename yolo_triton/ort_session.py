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
    # Idle worker threads sleep instead of spinning: on a few cores a spinning pool takes the CPU
    # the pipeline's letterbox/NMS and Triton's own threads need. YOLO_ORT_SPINNING=1 turns it on.
    spinning = os.environ.get("YOLO_ORT_SPINNING", "0")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "1" else "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
