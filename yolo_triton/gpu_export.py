"""The artefact the GPU detector (`detector_torch`) loads: the checkpoint's network as TorchScript.

Why TorchScript: the python-backend detector then needs only torch (no ultralytics, no model
code) to load it, and a traced graph is what CUDA graphs capture best. Why traced in FP32 on the
CPU: the artefact is then the same file on every machine and can be checked against the ONNX
export in CI; the detector casts it to FP16 on the GPU at load (`torch_ops.load_network`).

The network is traced exactly as Ultralytics exports it (fused Conv+BN, Detect head in export
mode: one (B, 4 + nc, anchors) tensor of xywh boxes and class scores, the ONNX model's output).
The batch axis stays symbolic in the trace; the anchor grid is baked for the input size.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from yolo_triton import spec
from yolo_triton.repository import ModelFacts


def artefact_path(repo: Path) -> Path:
    v = spec.variant("gpu")
    return repo / v.detector / "1" / v.artefact


def trace(model, imgsz: int):  # noqa: ANN001, ANN201 - ultralytics.YOLO in, torch.jit.ScriptModule out
    """Fused FP32 CPU trace of a YOLO model's network at a square input of `imgsz`."""
    import torch
    from ultralytics.nn.modules import Detect

    net = copy.deepcopy(model.model).to("cpu").float().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net = net.fuse()
    for m in net.modules():
        if isinstance(m, Detect):
            m.dynamic, m.export, m.format = False, True, "torchscript"
    example = torch.zeros(1, 3, imgsz, imgsz)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-side shape checks
        net(example)  # builds the anchor grid for this size once, as the exporter does
        return torch.jit.trace(net, example, strict=False, check_trace=False)


def export_for_gpu(model, facts: ModelFacts, repo: Path) -> str:  # noqa: ANN001
    """Write the TorchScript artefact into the repository; a one-line message for the build log."""
    import torch

    from yolo_triton.torch_ops import FACTS_EXTRA

    dest = artefact_path(repo)
    dest.parent.mkdir(parents=True, exist_ok=True)
    traced = trace(model, facts.imgsz)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in favour of torch.export
        torch.jit.save(traced, str(tmp), _extra_files={FACTS_EXTRA: facts.to_json()})
    tmp.replace(dest)
    rel = f"{dest.parent.parent.name}/{dest.parent.name}/{dest.name}"
    return (f"GPU detector artefact {rel} ({dest.stat().st_size / 1e6:.1f} MB TorchScript, FP32 trace; "
            "served in FP16 with CUDA graphs where a GPU is visible)")
