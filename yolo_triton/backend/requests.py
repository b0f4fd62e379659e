"""The requests of one execute(): read once, refused one by one, answered in order.

Every python model gathers its requests' inputs, checks them, runs one batch and scatters the
answers. That glue lives here once: a request whose input is bad (`InputError`) gets
INVALID_ARG naming the problem and drops out, the rest of the batch is served, and a batched
step may refuse single requests afterwards by returning an InputError in their place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from yolo_triton import spec
from yolo_triton.backend.tensors import TensorIO
from yolo_triton.pipeline.validation import InputError, request_options

T = TypeVar("T")
U = TypeVar("U")
OPTIONS = tuple(t.name for t in spec.OPTIONS)


def error_response(pb_utils: ModuleType, err: Exception) -> Any:  # noqa: ANN401 - pb_utils.InferenceResponse
    """INVALID_ARG for the one request; the model and the rest of its batch carry on."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(str(err), code) if code is not None else pb_utils.TritonError(str(err))
    return pb_utils.InferenceResponse(error=error)


class Requests:
    """The live requests of one execute() and their responses (see the module docstring)."""

    def __init__(self, pb_utils: ModuleType, requests: Sequence[Any], io: TensorIO) -> None:
        self.pb, self.requests, self.io = pb_utils, list(requests), io
        self.responses: list[Any] = [None] * len(self.requests)
        self.live: list[int] = list(range(len(self.requests)))

    def each(self, read: Callable[[Any], T]) -> list[T]:
        """`read(request)` for every live request, in order; one that raises InputError is refused
        and leaves `live`. The values returned line up with the new `live`."""
        values, live = [], []
        for i in self.live:
            try:
                values.append(read(self.requests[i]))
            except InputError as e:
                self.refuse(i, e)
                continue
            live.append(i)
        self.live = live
        return values

    def then(self, values: Sequence[T], read: Callable[[Any, T], U]) -> tuple[list[int], list[U]]:
        """A second pass: `read(request, value)` for every live request and the value an earlier
        `each` gave it (the values line up with `live`). A request that raises InputError is refused;
        returns the positions in `values` of the requests still live, and what `read` gave them."""
        if len(values) != len(self.live):
            raise ValueError(f"{len(values)} values for {len(self.live)} live requests")
        kept, out, live = [], [], []
        for k, (i, value) in enumerate(zip(self.live, values)):
            try:
                out.append(read(self.requests[i], value))
            except InputError as e:
                self.refuse(i, e)
                continue
            kept.append(k)
            live.append(i)
        self.live = live
        return kept, out

    def input(self, request: Any, name: str) -> Any:  # noqa: ANN401 - an array or a tensor
        """A required input of `request` (Triton has checked it is there, with its dtype)."""
        return self.io.read(self.pb, request, name)

    def options(self, request: Any, images: int) -> tuple[list[tuple[float, float, int]], list[bool]]:
        """One request's per-image (conf, iou, max_det) and MULTI_LABEL flags, defaults filled in."""
        values = self.io.read_many(self.pb, request, OPTIONS)
        return request_options(values.__getitem__, images)

    def refuse(self, i: int, err: Exception) -> None:
        self.responses[i] = error_response(self.pb, err)

    def answer(self, results: Sequence[Sequence[Any] | InputError], outputs: Sequence[spec.TensorSpec]) -> list[Any]:
        """Respond to every live request with its results (one array per output), or refuse it with
        the InputError in its place; returns every response of the execute()."""
        if len(results) != len(self.live):
            raise ValueError(f"{len(results)} results for {len(self.live)} live requests")
        for i, result in zip(self.live, results):
            if isinstance(result, InputError):
                self.refuse(i, result)
                continue
            tensors = [self.io.tensor(self.pb, t.name, a) for t, a in zip(outputs, result)]
            self.responses[i] = self.pb.InferenceResponse(tensors)
        return self.responses
