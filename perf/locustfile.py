"""Locust load test of a served ensemble over gRPC: Locust's entry file (it loads a file by path).

    locust -f perf/locustfile.py --headless -u 4 -r 2 -t 60s --triton-url 127.0.0.1:8001 [--triton-model yolov8n]

The user and its options live in the package (yolo_triton/perf/users.py); `yolo-triton locust`
(yolo_triton.perf.locust) runs this with a server, reports and Triton's per-stage statistics,
and `yolo-triton soak` runs it paced, with every reply checked.
"""

from yolo_triton.perf.users import TritonGrpcUser

__all__ = ["TritonGrpcUser"]
