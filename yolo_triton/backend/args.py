"""What a python model reads from Triton's `initialize` args: its config and the artefact it loads.

The parameters are the ones `repository` writes (`artefact`, `artefact_model`, `imgsz`, a
variant's extras); reading them back in one place keeps each model's initialize() to what is its
own. Torch-free, so the CPU models can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from yolo_triton.repository.facts import ModelFacts


@dataclass(frozen=True)
class ModelArgs:
    config: dict
    params: dict[str, str]
    version_dir: Path
    device_id: int = 0  # the GPU Triton gave this instance (KIND_GPU)

    @classmethod
    def parse(cls, args: dict) -> ModelArgs:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        return cls(config, params, Path(args["model_repository"]) / args["model_version"],
                   int(args.get("model_instance_device_id", 0) or 0))

    @property
    def artefact(self) -> Path:
        """The file the model loads: in its own version folder, or, for a fused pipeline, in the
        folder of `artefact_model` (the detector it shares the artefact with, no copy)."""
        owner = self.params.get("artefact_model")
        folder = self.version_dir.parent.parent / owner / "1" if owner else self.version_dir
        return folder / self.params["artefact"]

    def existing_artefact(self) -> Path:
        """`artefact`, or FileNotFoundError saying how to make it."""
        path = self.artefact
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: run `make build-engines` on this machine")
        return path

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def role(self) -> str:
        """What the model does: preprocess, network, postprocess or pipeline (repository.configs)."""
        return self.params["role"]

    @property
    def device(self) -> str:
        return self.params.get("device", "cpu")

    @property
    def imgsz(self) -> int:
        return int(self.params["imgsz"])

    @property
    def facts(self) -> ModelFacts:
        """The checkpoint's facts as the config carries them (input size, class names)."""
        return ModelFacts(self.imgsz, tuple(json.loads(self.params.get("names", "[]"))), "")

    @property
    def max_batch(self) -> int:
        return int(self.config["max_batch_size"])

    def enabled(self, name: str) -> bool:
        """An on/off parameter; on unless set to "0"."""
        return self.params.get(name, "1") != "0"
