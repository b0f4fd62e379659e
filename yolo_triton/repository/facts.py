"""What a checkpoint says about itself (input size, class names), recorded next to the artefacts.

The configs are rendered from these facts and `spec`; the server's python models read them back
from their config's parameters, so a repository carries all it needs with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FACTS_FILE = "artefact.json"
STRIDES = (8, 16, 32)  # YOLOv8's detection strides: one anchor per grid cell of each


@dataclass(frozen=True)
class ModelFacts:
    """What the checkpoint says about itself; recorded next to the artefacts."""

    imgsz: int
    names: tuple[str, ...]
    source: str

    @property
    def num_outputs(self) -> int:
        return 4 + len(self.names)

    @property
    def num_anchors(self) -> int:
        return sum((self.imgsz // s) ** 2 for s in STRIDES)

    def to_json(self) -> str:
        return json.dumps({"imgsz": self.imgsz, "names": list(self.names), "source": self.source}, indent=1)

    @staticmethod
    def from_json(text: str) -> ModelFacts:
        d = json.loads(text)
        return ModelFacts(int(d["imgsz"]), tuple(d["names"]), str(d.get("source", "")))


def read_facts(root: Path) -> ModelFacts:
    return ModelFacts.from_json((root / FACTS_FILE).read_text())
