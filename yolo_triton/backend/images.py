"""A request's images, from whichever of IMAGE (pixels) and IMAGE_BYTES (encoded files) it carries.

A request sends its images once: both inputs, or neither, is an InputError saying so. Pixels come
as one batch of one size; encoded files decode to images of any sizes, so a request's images are
handed on as "pieces" (batches of one size: the pixel batch, or one file each), which the stage
objects take like requests. `flatten` and `regroup` cut a batch of requests into pieces and
join the pieces' answers back into one response per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from yolo_triton import spec
from yolo_triton.pipeline import encoded
from yolo_triton.pipeline.postprocess import merge
from yolo_triton.pipeline.protocol import Outputs
from yolo_triton.pipeline.validation import InputError, check_images

T = TypeVar("T")


def image_input(pb_utils: ModuleType, request: Any) -> tuple[spec.TensorSpec, Any]:  # noqa: ANN401
    """(IMAGE or IMAGE_BYTES, its pb_utils.Tensor): the one image input the request carries.

    An IMAGE_BYTES of empty elements next to IMAGE carries no image, and is not taken for a second
    one: perf_analyzer's shared-memory mode must send every optional input, so it measures IMAGE
    with an empty IMAGE_BYTES beside it (perf.inputs.write_input_data).
    """
    sent = [(t, x) for t in spec.IMAGE_INPUTS if (x := pb_utils.get_input_tensor_by_name(request, t.name)) is not None]
    if len(sent) == 2 and sent[0][0] is spec.IMAGE and _no_files(sent[1][1]):
        return sent[0]
    if len(sent) == 1:
        return sent[0]
    if sent:
        raise InputError(f"send the images once: {spec.IMAGE.name} (decoded pixels) or "
                         f"{spec.IMAGE_BYTES.name} (encoded files), not both")
    raise InputError(f"no images: send {spec.IMAGE.name} (decoded BGR uint8 pixels, [batch, height, width, 3]) "
                     f"or {spec.IMAGE_BYTES.name} (one encoded JPEG/PNG/WebP file per image, [batch, 1] BYTES)")


def _no_files(tensor: Any) -> bool:  # noqa: ANN401
    """Whether a BYTES tensor holds only empty elements."""
    try:
        files = tensor.as_numpy()
    except Exception:  # noqa: BLE001 - unreadable here: then it is not "no files"
        return False
    return files.size > 0 and all(len(f) == 0 for f in files.reshape(-1))


def host_pieces(pb_utils: ModuleType, request: Any) -> list[np.ndarray | encoded.EncodedFile]:  # noqa: ANN401
    """A request's images on the host (the CPU models): its pixel batch, or each file with its
    header checked, decoded only when it is letterboxed (`cpu.Letterbox`)."""
    t, tensor = image_input(pb_utils, request)
    if t is spec.IMAGE:
        return [check_images(tensor.as_numpy())]
    return encoded.encoded_files(encoded.images_of(tensor.as_numpy()))


def count(pieces: Sequence[Any]) -> int:
    """Images in a request's pieces (NHWC arrays or tensors, or encoded.EncodedFile)."""
    return sum(int(p.shape[0]) for p in pieces)


def flatten(per_request: Sequence[Sequence[T]]) -> tuple[list[T], list[int]]:
    """Every request's pieces in one list, and how many each request has."""
    return [p for pieces in per_request for p in pieces], [len(pieces) for pieces in per_request]


def cut(values: Sequence[T], pieces: Sequence[Any]) -> list[list[T]]:
    """A request's per-image values (its limits, its flags) cut as its pieces cut its images."""
    out, start = [], 0
    for p in pieces:
        out.append(list(values[start : start + int(p.shape[0])]))
        start += int(p.shape[0])
    return out


def first_error(results: Sequence[object]) -> InputError | None:
    """The first refusal among one request's pieces, which refuses the request; None if none."""
    return next((r for r in results if isinstance(r, InputError)), None)


def regroup(results: Sequence[Outputs | InputError], counts: Sequence[int]) -> list[Outputs | InputError]:
    """The pieces' answers joined into one per request (the first refusal of a request refuses it)."""
    out: list[Outputs | InputError] = []
    start = 0
    for n in counts:
        mine = results[start : start + n]
        start += n
        error = first_error(mine)
        out.append(error if error is not None else (mine[0] if n == 1 else merge(mine)))
    return out
