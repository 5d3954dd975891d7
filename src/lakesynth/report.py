"""What a stage reports back, and the run summary JSON written by `--summary`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageResult:
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    tables: list = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def line(self, stage: str, seconds: float) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.metrics.items())
        return (
            f"{stage}: ok, {self.rows_in} in, {self.rows_out} out, {self.errors} errors{extra}, {seconds:.1f} s"
        )
