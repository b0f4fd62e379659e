"""The tables the tools read and write: CSV (perf_analyzer's, Locust's, our own) and Markdown.

One reader for every CSV means numbers come back as floats wherever a tool or the report reads
them, and one writer means every tool rounds the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def read_csv(path: Path) -> list[dict[str, float | str]]:
    """Rows of a CSV with numeric cells as floats (perf_analyzer's and Locust's reports)."""
    with path.open(newline="") as f:
        return [{k.strip(): _number(v.strip()) for k, v in row.items() if k is not None} for row in csv.DictReader(f)]


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    cols = list(columns or (rows[0].keys() if rows else []))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}".rstrip("0").rstrip(".") if isinstance(v, float) else v) for k, v in r.items()})
    return path


def aggregated(stats_csv: Path) -> dict:
    """The `Aggregated` row of a Locust stats CSV ({} when Locust wrote none)."""
    rows = read_csv(stats_csv) if stats_csv.exists() else []
    return next((r for r in rows if r.get("Name") == "Aggregated"), {})


def markdown_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 1) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
