"""metrics.jsonl: a run's records (losses, timings, evaluations), one JSON object a line, appended as it trains."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["MetricsLog"]


class MetricsLog:
    """The records of one run at ``path``; only the ``writer`` (rank 0) writes, every rank may read."""

    def __init__(self, path: Path, writer: bool):
        self.path, self.writer = Path(path), writer

    def append(self, record: dict) -> None:
        if self.writer:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        """The records so far (a line a crash cut short is left out)."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def keep_until(self, step: int) -> None:
        """Drop the records of steps after ``step``: a resume replays them, and must not log them twice."""
        if self.writer and self.path.is_file():
            kept = [record for record in self.records() if record.get("step", 0) <= step]
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            temporary.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
            os.replace(temporary, self.path)
