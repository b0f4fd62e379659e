"""The GPU models' side of the python backend: their device, and tensors in and out of torch by DLPack.

Inputs cross the stub boundary by DLPack, so that an image in GPU memory (CUDA shared memory, an
upstream GPU step) is used in place. GPU outputs leave by DLPack too; host outputs (the kept
boxes) by the stub's NumPy path, which is cheaper and needs the NumPy 1 the stub is built for
(docs/gpu.md). `pb_utils` is passed in because it exists only inside the stub.
"""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack


def gpu_device(pb_utils: ModuleType, device_id: int, model: str) -> torch.device:
    """The GPU Triton gave this model instance, made current; without one the load fails with the
    reason, and Triton keeps serving every other model."""
    if not torch.cuda.is_available():
        raise pb_utils.TritonModelException(f"{model} needs a CUDA GPU and none is visible to torch")
    device = torch.device("cuda", device_id)
    torch.cuda.set_device(device)
    return device


def on_device(t: Any, device: torch.device) -> torch.Tensor:  # noqa: ANN401 - pb_utils.Tensor
    """A tensor on `device`: used in place when Triton placed it there (CUDA shared memory or an
    upstream GPU step), uploaded once otherwise."""
    x = from_dlpack(t.to_dlpack())
    return x if x.device == device else x.to(device)


def optionals(
    pb_utils: ModuleType, request: Any, names: list[str], stream: torch.cuda.Stream | None = None,  # noqa: ANN401
) -> dict[str, np.ndarray | None]:
    """Several small inputs of one request on the host, with at most one device-to-host copy.

    A client using CUDA shared memory (perf_analyzer does) puts the thresholds in GPU memory
    too; copying each separately would cost a synchronisation apiece. Their bytes travel in one
    uint8 buffer (one kernel, no casts) and each array is viewed back in its own dtype. With `stream`,
    the copy runs and is waited for there, so it need not wait behind work already queued on
    the current stream (the network of this very request).
    """
    out: dict[str, np.ndarray | None] = {}
    on_gpu: list[tuple[str, torch.Tensor]] = []
    for name in names:
        t = pb_utils.get_input_tensor_by_name(request, name)
        if t is None:
            out[name] = None
            continue
        x = from_dlpack(t.to_dlpack())
        if x.is_cuda:
            on_gpu.append((name, x))
        else:
            out[name] = x.numpy()
    if on_gpu:
        on_gpu.sort(key=lambda item: -item[1].element_size())  # widest first: every slice stays aligned
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            raw = torch.cat([x.reshape(-1).view(torch.uint8) for _, x in on_gpu]).cpu().numpy()
        start = 0
        for name, x in on_gpu:
            dtype = _numpy_dtype(x.dtype)
            size = x.numel() * dtype.itemsize
            out[name] = raw[start : start + size].view(dtype).reshape(tuple(x.shape))
            start += size
    return out


@functools.cache
def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """NumPy's dtype for a torch dtype, worked out once per dtype rather than once per request."""
    return torch.empty(0, dtype=dtype).numpy().dtype


def output(pb_utils: ModuleType, name: str, array: np.ndarray) -> Any:  # noqa: ANN401 - pb_utils.Tensor
    """A host output by the stub's NumPy path, which works under every server the launcher starts
    (it refuses a NumPy 2 under the bundled stub, serve.install). By DLPack the four outputs took
    0.16 ms a request in a cProfile of the served H200 path (docs/benchmarks.md)."""
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


class TorchIO:
    """The GPU models' TensorIO: inputs as torch tensors where Triton put them (DLPack), small
    options copied to the host in one go (`optionals`); host outputs by NumPy, GPU ones by DLPack."""

    def __init__(self, stream: torch.cuda.Stream | None = None) -> None:
        self.stream = stream

    def read(self, pb_utils: ModuleType, request: Any, name: str) -> torch.Tensor | None:  # noqa: ANN401
        t = pb_utils.get_input_tensor_by_name(request, name)
        return None if t is None else from_dlpack(t.to_dlpack())

    def read_many(self, pb_utils: ModuleType, request: Any, names: list[str]) -> dict[str, np.ndarray | None]:  # noqa: ANN401
        return optionals(pb_utils, request, list(names), self.stream)

    def tensor(self, pb_utils: ModuleType, name: str, value: Any) -> Any:  # noqa: ANN401
        if isinstance(value, np.ndarray):
            return output(pb_utils, name, value)
        return pb_utils.Tensor.from_dlpack(name, value)
