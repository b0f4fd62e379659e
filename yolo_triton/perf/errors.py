"""The error every measurement tool reports as its own (exit 2, the message and nothing else)."""

from __future__ import annotations


class PerfToolError(RuntimeError):
    """A measurement cannot run as asked; the message says what to do."""
