"""How far a long stage has got, where a person can see it. On a terminal, the pools' tqdm bars (tqdm turns itself
off without one). Without one (a Databricks task log, a CI log, `make run > log 2>&1`), a plain line at least every
`interval` seconds, from a thread of its own so that it comes even while no request finishes:

    questions: 40/120 done, 2 errors, 3.1 req/s, ETA 26 s (estimate 31 s), 12 s elapsed

The ETA in brackets is the saved estimate's (core/estimate.py: its seconds per request for the stage, from a
preview), where one exists: before the first request finishes it is the only one, `ETA (estimate 40 s)`.

A stage opens one `Lines` for all its chunks and pools (`stage`); a pool of that stage (its label is the stage's
name, or the name and a chunk number) counts into it (`current`). The pools run in this process (the driver, or the
embedded engine's UDFs); on Databricks they run on the executors, so the stage's line counts the rows of its
finished chunks (`reached`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Self, TextIO

DEFAULT_INTERVAL_S = 30.0
_open: dict[str, Lines] = {}  # stage name -> its progress lines, while it runs
_lock = threading.Lock()


def terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default: stderr, where progress goes) is a terminal a bar can redraw."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class Lines:
    """Counts of one stage's requests and a thread that prints them as a line every `interval` seconds, and once
    more when it closes."""

    def __init__(self, label: str, total: int = 0, *, interval: float = DEFAULT_INTERVAL_S, unit: str = "req",
                 last: bool = True, file: TextIO | None = None, estimate_s: float | None = None) -> None:  # fmt: skip
        """`last`: a line when it closes, however short it ran (else only after a line was due: a pool's own
        lines say nothing of a one-request preflight). `estimate_s`: seconds per request by the saved estimate."""
        self.label, self.total, self.unit, self.interval, self.last = label, total, unit, interval, last
        self.estimate_s = estimate_s
        self.printed: tuple[int, int, int] | None = None  # the counts of the last line printed
        self.file = file or sys.stderr
        self.done = self.errors = 0
        self.started = time.monotonic()
        self._count = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"lakesynth-progress-{label}", daemon=True)
        self._thread.start()

    def add_total(self, n: int) -> None:
        with self._count:
            self.total += n

    def update(self, n: int = 1, *, errors: int = 0) -> None:
        with self._count:
            self.done += n
            self.errors += errors

    def reached(self, done: int) -> None:
        """At least `done` finished (the rows of the chunks merged so far): counts made elsewhere."""
        with self._count:
            self.done = max(self.done, done)

    def line(self) -> str:
        with self._count:
            done, total, errors = self.done, max(self.total, self.done), self.errors
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {done}/{total} done, {errors} errors, {rate:.1f} {self.unit}/s"
        measured = f"ETA {_duration((total - done) / rate)}" if 0 < done < total and rate > 0 else ""
        if done < total and self.estimate_s:
            text += f", {measured or 'ETA'} (estimate {_duration((total - done) * self.estimate_s)})"
        elif measured:
            text += f", {measured}"
        return text + f", {_duration(elapsed)} elapsed"

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._print()

    def _print(self) -> None:
        counts = (self.done, self.total, self.errors)
        if counts == self.printed:  # nothing moved since the last line (the closing one just after a tick)
            return
        self.printed, text = counts, self.line()
        try:
            print(text, file=self.file, flush=True)
        except (OSError, ValueError):  # the stream went away (a closed pipe): progress is never the run's failure
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            if self.last or self.printed:
                self._print()


def _duration(seconds: float) -> str:
    whole = round(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@contextlib.contextmanager
def stage(
    name: str, total: int, *, interval: float = DEFAULT_INTERVAL_S, estimate_s: float | None = None
) -> Iterator[Lines | None]:
    """The stage's progress lines while it runs, where no terminal shows the pools' bars (else None); `estimate_s`:
    seconds per request by the saved estimate, for its ETA beside the measured one."""
    if terminal():
        yield None
        return
    lines = Lines(name, total, interval=interval, estimate_s=estimate_s)
    with _lock:
        _open[name] = lines
    try:
        yield lines
    finally:
        with _lock:
            _open.pop(name, None)
        lines.close()


def current(label: str) -> Lines | None:
    """The open stage a pool with this label belongs to (`name`, or `name k/n` for a chunk), if any."""
    with _lock:
        return _open.get(label) or _open.get(label.rsplit(" ", 1)[0])
