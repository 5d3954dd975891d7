"""The journal: finished requests as JSON lines, one file per writer, so a rerun pays only for what was lost."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    """One request's outcome: the validated output, or the error (with the raw reply where there was one)."""

    key: str
    fingerprint: str
    model: str
    output: dict | None = None
    raw_output: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    attempts: int = 0
    from_journal: bool = False


_JOURNAL_FINGERPRINT = re.compile(r'"fingerprint": "([0-9a-f]{64})"')


class Journal:
    """Append-only JSON lines of finished requests; one file per writer, so workers never contend."""

    def __init__(self, folder: str | None) -> None:
        self.folder = Path(folder) if folder else None
        self._file = None

    def load(self, wanted: set[str]) -> dict[str, Result]:
        """Successful results for the `wanted` fingerprints (a torn last line from a killed process is
        skipped). Lines are streamed and only hits are parsed: the journal grows with the stage, a
        batch's share of it does not."""
        found: dict[str, Result] = {}
        if not self.folder or not self.folder.is_dir():
            return found
        for path in sorted(self.folder.glob("*.jsonl")):
            with path.open(encoding="utf-8") as lines:
                for line in lines:
                    hit = _JOURNAL_FINGERPRINT.search(line)
                    if not hit or hit.group(1) not in wanted:
                        continue
                    with contextlib.suppress(json.JSONDecodeError, TypeError):
                        result = Result(**json.loads(line))
                        if result.error is None:
                            found[result.fingerprint] = result
        return found

    def append(self, result: Result) -> None:
        """Write one finished request; the file is line-buffered, so a killed process loses at most this line."""
        if not self.folder:
            return
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = (self.folder / f"{uuid.uuid4().hex}.jsonl").open("a", encoding="utf-8", buffering=1)
        # vars(), not asdict(): the same fields in the same order, without a deep copy of the output.
        self._file.write(json.dumps(vars(result), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def clear_journal(folder: str) -> None:
    """Called once the stage's table holds the journal's results."""
    shutil.rmtree(folder, ignore_errors=True)
