"""Ctrl-C during a run: end within seconds, keeping every finished request for the rerun.

SIGINT alone did not do it. The requests of an LLM stage run in a UDF inside the embedded engine, in this process,
while the main thread waits on the Spark Connect call; a KeyboardInterrupt there makes pyspark ask the engine to
interrupt the operation, a call that never returns, because the engine (Sail) shuts its server down on SIGINT and
the UDF's Python code cannot be aborted. So `on_interrupt` does the keeping itself: the first SIGINT stops the pools
from starting requests and writes every journal's finished requests at once, then raises KeyboardInterrupt for an
orderly exit; if the process has not ended `grace_s` later, it ends with exit code 130. A second SIGINT ends it at
once. The rerun reads the journals and pays only for the requests that had not finished.

The run's own record of the stop (`add_record`: its MLflow run KILLED) is written once, in a thread of its own,
started by the first SIGINT (the KeyboardInterrupt may never reach the runner: pyspark's interrupt call hangs) and
waited for, at most RECORD_S, by whichever ends the process (a second SIGINT does not wait). The message is printed
once (`say`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

from lakesynth.llm.journal import Journal

EXIT_CODE = 130  # 128 + SIGINT, as a shell reports an interrupted command
RECORD_S = 2.0  # the longest the stop's record may hold up the end (the engine may be stopping under it)
_requested = threading.Event()
_said = threading.Event()
_journals: weakref.WeakSet[Journal] = weakref.WeakSet()  # the open pools' journals
_records: list[Callable[[], None]] = []  # what records the stop of the run going on (`add_record`)
_recorder: list[threading.Thread] = []  # the one thread writing them, once started
_lock = threading.Lock()


def register(journal: Journal) -> None:
    _journals.add(journal)


def unregister(journal: Journal) -> None:
    _journals.discard(journal)


def drop_journals(under: str) -> None:
    """The open journals in folder `under` keep nothing more: it is being removed."""
    for journal in list(_journals):
        if journal.folder is not None and journal.folder.is_relative_to(under):
            journal.drop()


def requested() -> bool:
    """Whether the run is stopping: a pool starts no more requests."""
    return _requested.is_set()


def keep_finished() -> None:
    """Stop new requests, and write every open journal's finished requests now (and each one after it, as it
    finishes)."""
    _requested.set()
    for journal in list(_journals):
        journal.flush_now()


def add_record(record: Callable[[], None]) -> None:
    """A stop of the run that starts now calls `record` (once, bounded: see the module), until `remove_record`."""
    _recorder.clear()  # an earlier run's stop in this process (a test's, a notebook's) was recorded: not this one's
    _records.append(record)


def remove_record(record: Callable[[], None]) -> None:
    if record in _records:
        _records.remove(record)


def _write_records() -> None:
    for record in reversed(list(_records)):  # a copy, innermost first: a run's row before its preview's drop
        try:
            record()
        except Exception as exc:  # noqa: BLE001 - the record of a stop never changes how it ends
            print(f"warning: the stop was not recorded ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)


def record_stop(timeout: float = RECORD_S) -> None:
    """Write the stop's record (once: a later call waits for the first), waiting at most `timeout` s for it."""
    with _lock:
        if not _recorder:
            _recorder.append(threading.Thread(target=_write_records, name="lakesynth-stop", daemon=True))
            _recorder[0].start()
    _recorder[0].join(timeout)


def say(message: str) -> None:
    """Print the stop's message on stderr, once however many ways the run ends."""
    with _lock:
        if _said.is_set():
            return
        _said.set()
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def on_interrupt(message: str, grace_s: float = 3.0) -> Iterator[None]:
    """While the block runs (in the main thread), SIGINT stops the run as the module says; `message` is printed
    on stderr when it has to end the process itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()  # a run before this one in the process (a test's, a notebook's) was stopped: not this one
    _said.clear()

    def end(wait: float = RECORD_S) -> None:
        record_stop(wait)
        say(message)
        sys.stdout.flush()
        os._exit(EXIT_CODE)  # the engine's call cannot be unwound; the journals are written

    def handler(signum, frame) -> None:
        if _requested.is_set():
            end(0)
        keep_finished()
        record_stop(0)
        watchdog = threading.Timer(grace_s, end)
        watchdog.daemon = True
        watchdog.start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
