"""The one python model: every python model of the repository is this class.

Its config's `role` and `device` parameters (written by yolo_triton.repository.configs) say which
stage objects it adapts (backend.roles); `Requests` owns the glue of one execute(), and
`StageMetrics` publishes the stages' times on the metrics port. A model folder holds only a
generated two-line model.py that imports this.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from yolo_triton.backend import roles
from yolo_triton.backend.args import ModelArgs
from yolo_triton.backend.metrics import StageMetrics, Stopwatch
from yolo_triton.backend.profiling import ExecuteProfile
from yolo_triton.backend.requests import Requests


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        margs = ModelArgs.parse(args)
        try:
            self.role = roles.make(margs, pb_utils)
        except FileNotFoundError as e:  # the artefact: the message says how to build it
            raise pb_utils.TritonModelException(str(e)) from None
        self.metrics = StageMetrics(pb_utils, margs.name, self.role.stages)
        self.profile = ExecuteProfile(margs.name)  # off unless the server's environment asks for it

    def execute(self, requests: list) -> list:
        with self.profile:
            batch = Requests(pb_utils, requests, self.role.io)
            watch = Stopwatch()
            images = self.role.execute(batch, watch)
            self.metrics.add(watch.seconds, images)
        return batch.responses

    def finalize(self) -> None:
        self.metrics.flush()
        self.profile.dump()
