"""The journal: finished requests as JSON lines in write-once files, so a rerun pays only for what was lost."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import time
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
    """Finished requests, buffered and written as new files that are never reopened: files on a Unity Catalog
    Volume cannot be appended to. A crash loses the requests in flight and at most `flush_s` of results."""

    def __init__(self, folder: str | None, flush_s: float = 0.0) -> None:
        self.folder = Path(folder) if folder else None
        self.flush_s = flush_s
        self._lines: list[str] = []
        self._since = 0.0  # when the oldest buffered line came (time.monotonic)
        self._lock = threading.Lock()  # the pool's loop appends; a Ctrl-C writes from the main thread (stop.py)

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
        """Buffer one finished request; flush once the buffer is `flush_s` old."""
        if not self.folder:
            return
        # vars(), not asdict(): the same fields in the same order, without a deep copy of the output.
        line = json.dumps(vars(result), ensure_ascii=False) + "\n"
        with self._lock:
            if not self._lines:
                self._since = time.monotonic()
            self._lines.append(line)
        if time.monotonic() - self._since >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffer as a new file in one write, no temp file and rename (a rename on a Volume is a copy):
        a reader, or a crash, that meets the file half written finds a torn last line, which `load` skips."""
        with self._lock:
            lines, self._lines = self._lines, []
            folder = self.folder
        if not lines or folder is None:  # no folder: the journal was dropped (`drop`)
            return
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{uuid.uuid4().hex}.jsonl").write_text("".join(lines), encoding="utf-8")

    def flush_now(self) -> None:
        """Write what is buffered, and from now on every result as it comes (the run is being stopped)."""
        self.flush_s = 0.0
        self.flush()

    def close(self) -> None:
        self.flush()

    def drop(self) -> None:
        """Keep nothing more: the folder is being removed (a stopped preview's scratch schema), and a request that
        finishes after would make it again."""
        with self._lock:
            self.folder, self._lines = None, []


def clear_journal(folder: str) -> None:
    """Called once the stage's table holds the journal's results."""
    shutil.rmtree(folder, ignore_errors=True)
