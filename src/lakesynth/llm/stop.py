"""Ctrl-C during a run: end within seconds, keeping every finished request for the rerun.

SIGINT alone did not do it. The requests of an LLM stage run in a UDF inside the embedded engine, in this process,
while the main thread waits on the Spark Connect call; a KeyboardInterrupt there makes pyspark ask the engine to
interrupt the operation, a call that never returns, because the engine (Sail) shuts its server down on SIGINT and
the UDF's Python code cannot be aborted. So `on_interrupt` does the keeping itself: the first SIGINT stops the pools
from starting requests and writes every journal's finished requests at once, then raises KeyboardInterrupt for an
orderly exit; if the process has not ended `grace_s` later, it ends with exit code 130. A second SIGINT ends it at
once. The rerun reads the journals and pays only for the requests that had not finished.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import weakref
from collections.abc import Iterator

from lakesynth.llm.journal import Journal

EXIT_CODE = 130  # 128 + SIGINT, as a shell reports an interrupted command
_requested = threading.Event()
_journals: weakref.WeakSet[Journal] = weakref.WeakSet()  # the open pools' journals


def register(journal: Journal) -> None:
    _journals.add(journal)


def unregister(journal: Journal) -> None:
    _journals.discard(journal)


def requested() -> bool:
    """Whether the run is stopping: a pool starts no more requests."""
    return _requested.is_set()


def keep_finished() -> None:
    """Stop new requests, and write every open journal's finished requests now (and each one after it, as it
    finishes)."""
    _requested.set()
    for journal in list(_journals):
        journal.flush_now()


@contextlib.contextmanager
def on_interrupt(message: str, grace_s: float = 3.0) -> Iterator[None]:
    """While the block runs (in the main thread), SIGINT stops the run as the module says; `message` is printed
    on stderr when it has to end the process itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end() -> None:
        print(message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_CODE)  # the engine's call cannot be unwound; the journals are written

    def handler(signum, frame) -> None:
        if _requested.is_set():
            end()
        keep_finished()
        watchdog = threading.Timer(grace_s, end)
        watchdog.daemon = True
        watchdog.start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
