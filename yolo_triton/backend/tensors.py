"""How a python model reads its inputs and makes its outputs: NumPy on the CPU, DLPack on the GPU.

`Requests` (requests.py) does the gathering; a `TensorIO` says how one tensor crosses the stub
boundary. The CPU models use NumPy (the stub builds the arrays anyway); the GPU models use
DLPack for everything (gpu_tensors.py says why), so this module stays torch-free for the CPU
stubs, which never import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol

import numpy as np


class TensorIO(Protocol):
    def read(self, pb_utils: ModuleType, request: Any, name: str) -> Any: ...  # noqa: ANN401, D102

    def read_many(self, pb_utils: ModuleType, request: Any, names: Sequence[str]) -> dict[str, Any]: ...  # noqa: ANN401, D102

    def tensor(self, pb_utils: ModuleType, name: str, value: Any) -> Any: ...  # noqa: ANN401, D102


class NumpyIO:
    """Host tensors as NumPy arrays (the CPU models)."""

    def read(self, pb_utils: ModuleType, request: Any, name: str) -> np.ndarray | None:  # noqa: ANN401
        t = pb_utils.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def read_many(self, pb_utils: ModuleType, request: Any, names: Sequence[str]) -> dict[str, np.ndarray | None]:  # noqa: ANN401
        return {name: self.read(pb_utils, request, name) for name in names}

    def tensor(self, pb_utils: ModuleType, name: str, value: np.ndarray) -> Any:  # noqa: ANN401
        return pb_utils.Tensor(name, value)
