"""YOLOv8n vs YOLOv5n on the same photos, stage by stage, next to every served variant.

    yolo-triton compare [--url HOST:PORT] [--repeats 10] [--quick] [--no-download]

For each Ultralytics model (YOLOv8n, and YOLOv5n as Ultralytics' anchor-free `yolov5nu`, same
library and same head so only the backbone/neck differ): parameters, GFLOPs at the served input
size, and Ultralytics' own per-stage timings (`results[0].speed`: preprocess, inference,
postprocess), median over repeats after warm-up, plus the wall time of `predict()`.
For each served variant: the same three stages from Triton's statistics (mean per request,
queue + compute; a fused variant's from its stage metrics, and skipped when it publishes none)
and the client's end-to-end latency over gRPC.

Pretrained weights are used when they are on disk or can be downloaded; otherwise the
architecture is built from its YAML with seeded random weights, and the output says so (speed is
the same, detections are not). Results: runs/compare/<timestamp>/{compare.md, compare.csv,
compare.json, meta.json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from yolo_triton import spec
from yolo_triton.client.detector import DetectorClient, ServerError
from yolo_triton.paths import ROOT, RUNS
from yolo_triton.perf import inputs, stages
from yolo_triton.perf import target as tg
from yolo_triton.perf.errors import PerfToolError
from yolo_triton.perf.probe import Probe
from yolo_triton.perf.runs import machine_info, run_dir, write_meta
from yolo_triton.perf.tables import markdown_table, write_csv

WEIGHTS_CACHE = RUNS / "weights"  # downloads land here (never in the source tree) and are reused
SEEDED = "seeded random weights (no pretrained download available)"
COLUMNS = ["name", "kind", "weights", "params_m", "gflops", "imgsz", "preprocess_ms", "inference_ms",
           "postprocess_ms", "end_to_end_ms", "end_to_end_p90_ms", "end_to_end_mean_ms", "e2e_vs_yolov8n",
           "inference_vs_yolov8n", "requests", "stage_statistic"]


@dataclass
class Row:
    name: str
    kind: str  # "ultralytics" | "served"
    weights: str
    params_m: float | None
    gflops: float | None
    imgsz: int
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    end_to_end_ms: float
    end_to_end_p90_ms: float
    end_to_end_mean_ms: float
    requests: int
    stage_statistic: str
    e2e_vs_yolov8n: float | None = None
    inference_vs_yolov8n: float | None = None


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


@contextlib.contextmanager
def _cwd(path: Path):  # noqa: ANN202
    old = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def load_model(weights: str, download: bool):  # noqa: ANN201 - ultralytics.YOLO
    """(model, description): the checkpoint if on disk or downloadable, else its YAML seeded."""
    from yolo_triton.repository import export

    for candidate in (Path(weights), ROOT / weights, WEIGHTS_CACHE / weights):
        if candidate.is_file():
            return export.load(str(candidate.resolve())), f"pretrained ({candidate.name})"
    yaml = weights.rsplit(".", 1)[0] + ".yaml"
    if download:
        try:
            with _cwd(WEIGHTS_CACHE):  # Ultralytics downloads into the working directory
                return export.load(weights), f"pretrained ({weights}, downloaded)"
        except export.WeightsUnavailable as e:
            print(f"compare: {weights}: {str(e).split(';')[0]}", flush=True)
    return export.load(yaml), f"{yaml}: {SEEDED}"


def size_of(model, imgsz: int) -> tuple[float, float]:  # noqa: ANN001
    from ultralytics.utils.torch_utils import get_flops

    params = sum(p.numel() for p in model.model.parameters()) / 1e6
    return params, float(get_flops(model.model, imgsz))


class UltralyticsRun:
    """One Ultralytics model being timed. The two models are timed in alternating passes (ABBA),
    so drift in the machine's load (it may be shared) falls on both alike."""

    def __init__(self, name: str, weights: str, imgsz: int, download: bool) -> None:
        self.name, self.imgsz = name, imgsz
        self.model, self.described = load_model(weights, download)
        self.params, self.gflops = size_of(self.model, imgsz)
        print(f"compare: {name}: {self.described}; {self.params:.2f} M params, {self.gflops:.2f} GFLOPs at {imgsz}",
              flush=True)
        self.kw = {"imgsz": imgsz, "device": "cpu", "verbose": False, "conf": spec.DEFAULT_CONF,
                   "iou": spec.DEFAULT_IOU, "max_det": spec.DEFAULT_MAX_DET}
        self.speeds: dict[str, list[float]] = {"preprocess": [], "inference": [], "postprocess": []}
        self.walls: list[float] = []

    def warm(self, samples: list[inputs.Sample], passes: int, threads: int | None) -> None:
        import torch

        self.model.predict(samples[0].image, **self.kw)  # sets the predictor up (and torch's threads: cores - 1)
        if threads:
            torch.set_num_threads(threads)
        for _ in range(passes):
            for s in samples:
                self.model.predict(s.image, **self.kw)

    def timed_pass(self, samples: list[inputs.Sample]) -> None:
        for s in samples:
            start = time.perf_counter()
            result = self.model.predict(s.image, **self.kw)[0]
            self.walls.append((time.perf_counter() - start) * 1e3)
            for k in self.speeds:
                self.speeds[k].append(float(result.speed[k]))

    def row(self) -> Row:
        w = self.walls
        return Row(self.name, "ultralytics", self.described, self.params, self.gflops, self.imgsz,
                   *(statistics.median(self.speeds[k]) for k in ("preprocess", "inference", "postprocess")),
                   statistics.median(w), p90(w), statistics.fmean(w), len(w), "median of results[0].speed")


def measure_ultralytics(models: list[tuple[str, str]], samples: list[inputs.Sample], imgsz: int, repeats: int,
                        warmup: int, download: bool, threads: int | None) -> list[Row]:
    runs = [UltralyticsRun(name, weights, imgsz, download) for name, weights in models]
    for r in runs:
        r.warm(samples, warmup, threads)
    for i in range(repeats):
        for r in runs if i % 2 == 0 else runs[::-1]:
            r.timed_pass(samples)
        print(f"compare: Ultralytics pass {i + 1}/{repeats} done", flush=True)
    rows = [r.row() for r in runs]
    for row in rows:
        print(f"compare: {row.name}: {describe(row)}", flush=True)
    return rows


def measure_served(url: str, metrics_url: str, model: str, samples: list[inputs.Sample], repeats: int,
                   warmup: int, imgsz: int, size: tuple[float | None, float | None, str]) -> Row | None:
    """The served variant's stages over the same photos; None for a fused variant that publishes
    no stage metrics (one figure for all three stages: nothing to split)."""
    v = tg.variant_of(model)
    assert v is not None, model
    tg.warm_up(url, model, samples, warmup)
    with DetectorClient(url, model=model, timeout_s=120) as client:
        probe = Probe(client, metrics_url, [model])
        probe.start()
        walls = [client.detect(s.image).latency_ms for _ in range(repeats) for s in samples]
        window = probe.stop()
    by = stages.by_stage(stages.rows(v, window.times, window.splits, "triton_statistics"))
    if not by and v.fused:
        print(f"compare: {model} skipped (fused: no stage metrics at {metrics_url}; `make bench-cpu` measures it)")
        return None
    if not by:
        missing = [m for m in v.stages if m not in window.times]
        raise ServerError(f"no statistics for {', '.join(missing)} after {len(walls)} requests", None)
    how = "stage metrics + Triton statistics" if v.fused else "Triton statistics"
    params, gflops, source = size
    row = Row(model, "served", source, params, gflops, imgsz, *(by[s] for s in spec.STAGES),
              statistics.median(walls), p90(walls), statistics.fmean(walls), len(walls),
              f"mean from {how} (queue + compute)")
    print(f"compare: {model}: {describe(row)}", flush=True)
    return row


def describe(r: Row) -> str:
    return (f"preprocess {r.preprocess_ms:.1f} ms, inference {r.inference_ms:.1f} ms, postprocess "
            f"{r.postprocess_ms:.1f} ms, end-to-end median {r.end_to_end_ms:.1f} ms (p90 {r.end_to_end_p90_ms:.1f}) "
            f"over {r.requests} requests")


def served_facts(url: str, model: str) -> tuple[int, int]:
    """(imgsz, number of classes) of a served ensemble, from its config."""
    with DetectorClient(url, model=model) as c:
        cfg = c.client.get_model_config(model, as_json=True, client_timeout=c.timeout_s)["config"]
        params = cfg.get("parameters", {})
        return int(params["imgsz"]["string_value"]), len(c.names)


def served_size(repo: Path, imgsz: int, nc: int) -> tuple[float | None, float | None, str]:
    """Params/GFLOPs of the served network, when its source checkpoint is at hand (the repository
    records it); the served detector is this network exported, so its size is the source's."""
    from yolo_triton.repository import configs as repository
    from yolo_triton.repository import export

    try:
        facts = repository.read_facts(repo)
    except (OSError, ValueError, KeyError):
        return None, None, "served checkpoint"
    label = f"served: {facts.source}"
    if len(facts.names) != nc or facts.imgsz != imgsz:
        return None, None, label  # the server runs something else than this repository
    src = facts.source
    if not src.endswith((".yaml", ".yml")):
        path = Path(src) if Path(src).is_absolute() else ROOT / src
        if not path.is_file():
            return None, None, label
        src = str(path)
    else:
        label += f", {SEEDED}"
    try:
        params, gflops = size_of(export.load(src), imgsz)
    except Exception as e:  # noqa: BLE001 - sizes are a nicety; the timings still stand
        print(f"compare: size of {facts.source} unavailable ({type(e).__name__})", flush=True)
        return None, None, label
    return params, gflops, label


def add_ratios(rows: list[Row]) -> None:
    """Ratios to Ultralytics' YOLOv8n for the Ultralytics rows only: they share the library, the
    threads and the letterbox. A served row differs in all of these (and often in weights), so no
    ratio is drawn for it; `make bench-cpu` compares served and raw on one setup."""
    base = next((r for r in rows if r.kind == "ultralytics" and r.name == "YOLOv8n"), None)
    if base is None:
        return
    for r in rows:
        if r.kind != "ultralytics":
            continue
        r.e2e_vs_yolov8n = r.end_to_end_ms / base.end_to_end_ms if base.end_to_end_ms else None
        r.inference_vs_yolov8n = r.inference_ms / base.inference_ms if base.inference_ms else None


def markdown(rows: list[Row], meta: dict) -> str:
    table = [asdict(r) for r in rows]
    for t in table:
        t["params_m"] = "" if t["params_m"] is None else f"{t['params_m']:.2f}"
        t["gflops"] = "" if t["gflops"] is None else f"{t['gflops']:.2f}"
        for k in ("e2e_vs_yolov8n", "inference_vs_yolov8n"):
            t[k] = "" if t[k] is None else f"{t[k]:.2f}x"
    out = [
        "# YOLOv8n vs YOLOv5n, and the served variants", "",
        f"Photos: {', '.join(f'{n} ({sz})' for n, sz in meta['images'])}; {meta['repeats']} repeats after "
        f"{meta['warmup']} warm-up pass(es); input size {meta['imgsz']}.", "",
        markdown_table(table, ["name", "kind", "params_m", "gflops", "preprocess_ms", "inference_ms",
                                  "postprocess_ms", "end_to_end_ms", "end_to_end_p90_ms", "end_to_end_mean_ms",
                                  "e2e_vs_yolov8n", "inference_vs_yolov8n"], 1),
        "", "Weights:", "",
        *[f"- {r.name}: {r.weights}" for r in rows], "",
        "Notes:", "",
        "- Ultralytics stages are the median of `results[0].speed` per image; `end_to_end_ms` (median; p90 and mean "
        "beside it) is the wall time of `predict()` in-process (no network). Served stages are Triton's mean per "
        "request (queue + compute input/infer/output) of the preprocess, detector and postprocess models (a fused "
        "model's: its stage metrics, with its queue and input/output handling in the first and last stage); "
        "`end_to_end_ms` is the gRPC client's latency, photo transfer included.",
        "- Ultralytics pads each photo only to the next multiple of 32 (e.g. 640x480 for a 4:3 photo); the served "
        "ensemble letterboxes to a fixed square, so its detector sees more pixels for non-square photos.",
        f"- Threads: torch {meta['torch_threads']} "
        f"({'set with --threads' if meta.get('threads_set') else 'Ultralytics default: cores - 1'}); "
        f"the served ONNX Runtime detector uses YOLO_ORT_THREADS of the server's environment, else all cores "
        f"({meta['machine']['cores']}); its workers spin while a run is active and stop when it returns (the "
        f"default; YOLO_ORT_SPINNING=0 in the server's environment turns spinning off).",
        "- Ratios (`*_vs_yolov8n`) are drawn between the Ultralytics rows only (same library, threads and "
        "letterbox). Served rows differ in transport, letterbox, threads and possibly weights, so they get none: "
        "`make bench-cpu` compares the served model with the same network run raw, on one setup.",
        f"- Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, load average "
        f"{meta['machine'].get('load_avg')} at the end; timings on a shared CPU are noisy.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v8", default="yolov8n.pt", help="YOLOv8n checkpoint (default yolov8n.pt)")
    ap.add_argument("--v5", default="yolov5nu.pt", help="YOLOv5n checkpoint (default yolov5nu.pt, Ultralytics' v5)")
    ap.add_argument("--no-download", action="store_true", help="never try to download pretrained weights")
    ap.add_argument("--repeats", type=int, help="timed passes over the photos (default 10; --quick: 2)")
    ap.add_argument("--warmup", type=int, help="untimed passes first (default 2; --quick: 1)")
    ap.add_argument("--imgsz", type=int, help="input size (default: the served model's)")
    ap.add_argument("--threads", type=int,
                    help="torch CPU threads (default: Ultralytics' own choice, cores - 1; more threads than free "
                         "cores make torch's spinning OpenMP threads much slower on a shared machine)")
    ap.add_argument("--no-served", action="store_true", help="only the two Ultralytics models")
    tg.add_target_args(ap, "compare", "3 photos, 2 repeats (tests, smoke checks)")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.repeats <= 0 or args.warmup < 0:
        print("compare: --repeats must be positive and --warmup not negative", file=sys.stderr)
        return 2
    return tg.reported("compare", lambda: _main(args))


def _measure(args: argparse.Namespace, samples: list[inputs.Sample], out: Path) -> tuple[list[Row], dict, int]:
    """(rows, server info, input size): the Ultralytics models, then every served variant."""
    rows: list[Row] = []
    server: dict = {}
    with contextlib.ExitStack() as stack:
        tgt = None
        imgsz = args.imgsz
        if not args.no_served:
            tgt = stack.enter_context(tg.target(args.url, args.repo, out / "tritonserver.log", "compare",
                                                args.metrics_url))
            server = tg.server_info(tgt)
            if not server["variants"]:
                raise PerfToolError(f"no variant ensemble is loaded on {tgt.url}")
            served_imgsz, nc = served_facts(tgt.url, server["variants"][0])
            imgsz = imgsz or served_imgsz
        imgsz = imgsz or 640
        rows += measure_ultralytics([("YOLOv8n", args.v8), ("YOLOv5n", args.v5)], samples, imgsz, args.repeats,
                                    args.warmup, not args.no_download, args.threads)
        if tgt is not None:
            size = served_size(args.repo, served_imgsz, nc)
            for model in server["variants"]:
                row = measure_served(tgt.url, tgt.metrics_url, model, samples, args.repeats, args.warmup,
                                     served_imgsz, size)
                rows += [row] if row else []
    return rows, server, imgsz


def _main(args: argparse.Namespace) -> int:
    samples = inputs.photos(args.images, args.quick)

    import torch

    out = run_dir("compare", args.runs_dir)
    print(f"compare: results -> {out}; photos: {', '.join(f'{s.name} {s.size}' for s in samples)}", flush=True)
    rows, server, imgsz = _measure(args, samples, out)
    add_ratios(rows)
    meta = {"images": [(s.name, s.size) for s in samples], "repeats": args.repeats, "warmup": args.warmup,
            "imgsz": imgsz, "torch_threads": torch.get_num_threads(), "threads_set": bool(args.threads),
            "server": server, "machine": machine_info(),
            "pretrained": {r.name: SEEDED not in r.weights for r in rows if r.kind == "ultralytics"}}
    write_csv(out / "compare.csv", [asdict(r) for r in rows], COLUMNS)
    (out / "compare.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], **meta}, indent=1))
    text = markdown(rows, meta)
    (out / "compare.md").write_text(text)
    write_meta(out, "compare", meta)
    print("\n" + text, flush=True)
    print(f"compare: compare.md, compare.csv, compare.json in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
