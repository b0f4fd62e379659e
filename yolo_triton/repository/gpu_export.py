"""The artefact the GPU detectors load: the checkpoint's network as a torch.export program.

Why torch.export: the GPU models then need only torch (no ultralytics, no model code) to load it,
and the loaded program is an FX graph that TorchInductor can compile before the CUDA graphs are
captured, which halves the network's time on an H200 (TorchScript, the previous format, cannot be
compiled). Why exported in FP32 on the CPU: the artefact is then the same file on every machine
and is checked against the ONNX export in CI; the models cast it to FP16 on the GPU at load
(`torch_network.load_network`).

The network is exported as Ultralytics exports it (fused Conv+BN, Detect head in export mode:
one (B, 4 + nc, anchors) tensor of xywh boxes and class scores, the ONNX model's output). The batch
axis is symbolic (1..MAX_BATCH); the anchor grid is a constant for the input size.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

from yolo_triton import spec
from yolo_triton.repository.configs import ModelFacts


def artefact_path(repo: Path) -> Path:
    v = spec.variant("gpu")
    return repo / v.detector / "1" / v.artefact


def export_network(model, imgsz: int):  # noqa: ANN001, ANN201 - ultralytics.YOLO in, ExportedProgram out
    """Fused FP32 CPU export of a YOLO model's network at a square input of `imgsz`, batch symbolic."""
    import torch
    from ultralytics.nn.modules import Detect

    net = copy.deepcopy(model.model).to("cpu").float().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net = net.fuse()
    heads = [m for m in net.modules() if isinstance(m, Detect)]
    for m in heads:
        m.dynamic, m.export, m.format = False, True, "torchscript"
    example = torch.zeros(2, 3, imgsz, imgsz)  # batch 2: an example of 1 would be specialised
    batch = torch.export.Dim("batch", min=1, max=spec.MAX_BATCH)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net(example)  # builds the anchor grid for this size once, as Ultralytics' exporter does
        for m in heads:
            m.shape = _AnyBatch(m.shape)
        return torch.export.export(net, (example,), dynamic_shapes=({0: batch},), strict=False)


class _AnyBatch:
    """The shape the Detect head built its anchor grid for, equal to that shape at any batch size.

    The head rebuilds the grid when the input shape differs from the cached one; comparing whole
    shapes would pin the exported batch size, and rebuilding in the graph would put CPU aranges
    and a host read of the strides in it, which a CUDA graph cannot capture. So the grid stays a
    constant of the program, like in the ONNX and TorchScript exports.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.rest = tuple(shape[1:])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, tuple) and tuple(other[1:]) == self.rest

    __hash__ = None  # type: ignore[assignment]


def export_for_gpu(model, facts: ModelFacts, repo: Path) -> str:  # noqa: ANN001
    """Write the exported network into the repository; a one-line message for the build log."""
    import torch

    from yolo_triton.pipeline.torch_network import FACTS_EXTRA

    dest = artefact_path(repo)
    dest.parent.mkdir(parents=True, exist_ok=True)
    program = export_network(model, facts.imgsz)
    tmp = dest.with_name(f"{dest.stem}.tmp{dest.suffix}")  # torch warns about a name not ending in .pt2
    with warnings.catch_warnings():  # "No complete tensor found in the group": weights are on the CPU, as meant
        warnings.simplefilter("ignore", UserWarning)
        torch.export.save(program, str(tmp), extra_files={FACTS_EXTRA: facts.to_json()})
    tmp.replace(dest)
    rel = f"{dest.parent.parent.name}/{dest.parent.name}/{dest.name}"
    return (f"GPU detector artefact {rel} ({dest.stat().st_size / 1e6:.1f} MB torch.export program, FP32; "
            "served in FP16, compiled, with CUDA graphs where a GPU is visible)")
