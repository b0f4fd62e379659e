"""Turn a bad-input exception into a Triton error response that names the problem."""

from __future__ import annotations

from types import ModuleType


def error_response(pb_utils: ModuleType, err: Exception):  # noqa: ANN201 - pb_utils.InferenceResponse
    """INVALID_ARG for the one request; the model and the rest of its batch carry on."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(str(err), code) if code is not None else pb_utils.TritonError(str(err))
    return pb_utils.InferenceResponse(error=error)
