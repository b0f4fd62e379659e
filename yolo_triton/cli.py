"""`yolo-triton`: every tool of the project behind one command.

    yolo-triton <command> [options]     (yolo-triton <command> --help for each)

Each command is a module's `main(argv)`, imported only when called: `detect` does not pay for
torch, and `serve` does not pay for Ultralytics.
"""

from __future__ import annotations

import importlib
import sys

# command, module whose main(argv) runs it, what it does
_TABLE = """
detect     yolo_triton.client.detect      detect objects in images, folders and videos through a running server
serve      yolo_triton.serve.cli          run tritonserver in the foreground (Ctrl-C drains, then stops)
build      yolo_triton.repository.build   export a checkpoint into the model repository (ONNX, GPU, TensorRT)
demo       yolo_triton.client.demo        build, serve, detect on the samples, per-stage times
eval       yolo_triton.client.evaluate    served mAP next to Ultralytics' validator on the same weights
perf       yolo_triton.perf.sweep         perf_analyzer concurrency and request-rate sweeps, per stage
locust     yolo_triton.perf.locust        Locust gRPC load test with per-stage shares
compare    yolo_triton.perf.compare       YOLOv8n vs YOLOv5n stage by stage, and every served variant
report     yolo_triton.perf.report        one Markdown report with plots from the latest runs
bench-cpu  yolo_triton.perf.bench_cpu     raw ONNX Runtime vs the served CPU variants vs Ultralytics
bench-gpu  yolo_triton.perf.bench_gpu     raw FP16 network vs the served GPU variants vs Ultralytics
soak       yolo_triton.perf.soak          hours of load: memory, latency and errors over time
scale      yolo_triton.perf.scale         replicas behind a gRPC balancer, one crashed under load, Prometheus queue time
"""
COMMANDS: dict[str, tuple[str, str]] = {
    name: (module, what) for name, module, what in (line.split(maxsplit=2) for line in _TABLE.strip().splitlines())
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: yolo-triton <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "yolo-triton <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"yolo-triton: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"yolo-triton {name}"  # argparse's prog in each command's help and errors
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
