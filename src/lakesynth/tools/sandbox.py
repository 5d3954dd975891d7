"""Run a user's Python functions for the function-calling execution check, away from the pipeline's processes.

A function-calling example is checked by calling its functions with its arguments, from a module the user
supplies. That code is not ours: it may raise, loop forever, exhaust memory or kill its interpreter. So it never
runs in the driver or in a Spark executor's Python worker. It runs in a small pool of worker processes
(pebble.ProcessPool): each call has a timeout and each worker an address-space limit, a worker that times out
or dies is replaced, and the pool and the imported module are reused across calls (starting a process and
importing the module per call would cost more than most calls). Arguments are passed as keyword arguments
(a dict parsed from JSON), never through `eval`.

Workers start with forkserver (or spawn), and never run the caller's main script (see hide_main): a
wheel task's main module is the platform's, and a script need not guard its main code.

This is isolation from mistakes, not a security boundary: the user's code runs with the pipeline's user, files,
network and credentials. Run only modules you would import yourself.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import multiprocessing
import sys
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pebble import ProcessExpired, ProcessPool

try:
    import resource
except ImportError:  # not on Windows: no memory limit there
    resource = None


@dataclass(frozen=True)
class Outcome:
    """One call's outcome: the return value as JSON text, or the error that failed the row."""

    ok: bool
    result: str | None
    error: str | None
    seconds: float


# Worker-side state, set once per worker process by _init_worker.
_module: ModuleType | None = None
_import_error: str | None = None
_memory_mb: int | None = None


def _describe(error: BaseException) -> str:
    """`TypeError: message`; an empty MemoryError names the limit, the usual cause under RLIMIT_AS."""
    text = str(error)
    if not text and isinstance(error, MemoryError) and _memory_mb:
        text = f"allocation failed (limit {_memory_mb} MB)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _init_worker(path: str, module_name: str, memory_mb: int) -> None:
    """Limit the worker's memory, then import the user's module once. An import error is kept, not raised:
    a failing initializer makes pebble respawn the worker and break the pool instead of reporting it."""
    global _module, _import_error, _memory_mb
    if resource is not None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        _memory_mb = memory_mb
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"not a Python module: {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # as an import does: dataclasses and pickle look the module up
        spec.loader.exec_module(module)
        _module = module
    except BaseException as error:  # noqa: BLE001 - SyntaxError, SystemExit, anything at import
        sys.modules.pop(module_name, None)
        _import_error = _describe(error)


def _import_status() -> str | None:
    """The worker's import error, or None: Sandbox start asks one worker."""
    return _import_error


def _call(name: str, arguments: dict[str, Any]) -> tuple[bool, str, float]:
    """Run one call in the worker: (ok, JSON result or error text, seconds). Only strings go back, since the
    user's exception or return types need not unpickle in the driver (they live in a module only workers load)."""
    if _module is None:
        return False, f"ImportError: {_import_error}", 0.0
    function = getattr(_module, name, None)
    # Only what the module itself defines: not `os.remove` after a `from os import remove`, nor private helpers.
    if name.startswith("_") or not callable(function) or getattr(function, "__module__", None) != _module.__name__:
        return False, f"NameError: the module defines no public function {name!r}", 0.0
    start = time.perf_counter()
    try:
        value = function(**arguments)
    except BaseException as error:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail the call too
        return False, _describe(error), time.perf_counter() - start
    seconds = time.perf_counter() - start
    try:
        return True, json.dumps(value, ensure_ascii=False, allow_nan=False), seconds
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001
            text = f"<{type(value).__name__} without a repr>"
        return True, json.dumps(text, ensure_ascii=False), seconds


def start_method() -> str:
    """Not fork: the driver runs a Spark Connect client (gRPC) and other threads, and a forked child copies their
    locks in whatever state they are. forkserver forks workers from a clean single-threaded server (fast restarts
    after a timeout or crash); spawn where forkserver is unavailable."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def hide_main() -> ModuleType | None:
    """Keep worker processes from running the caller's __main__ (spawn and forkserver start each one by running
    the parent's main script as `__mp_main__`). A Databricks wheel task's __main__ is the platform's launcher, and
    a script without the `if __name__ == "__main__"` guard would run the pipeline again in every worker. A main
    module named `__main__` is one multiprocessing does not import: it is given that name while a pool lives (only
    when it has none: a `python -m` main is imported by name, as usual). Returns the module to `restore_main`."""
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is None:
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
        return main
    return None


def restore_main(hidden: ModuleType | None) -> None:
    if hidden is not None:
        hidden.__spec__ = None


class Sandbox:
    """A pool of worker processes that import `module_path` once each and run calls to its public functions.

    `with Sandbox("tools.py", timeout_s=2) as box: outcomes = box.run([("get_weather", {"city": "Paris"})])`
    """

    def __init__(self, module_path: str | Path, *, workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 512):
        self.path = Path(module_path).resolve()
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self._pool: ProcessPool | None = None
        self._hidden = None  # the main module while it is named __main__ (see hide_main)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers and check that the module imports; a ValueError names the file if not."""
        if not self.path.is_file():
            raise ValueError(f"sandbox module not found: {self.path}")
        method = start_method()
        self._hidden = hide_main()
        module_name = f"_lakesynth_user_{uuid.uuid4().hex}"
        self._pool = ProcessPool(
            max_workers=self.workers,
            initializer=_init_worker,
            initargs=(str(self.path), module_name, self.memory_mb),
            context=multiprocessing.get_context(method),
        )
        try:
            # The import runs before a worker takes a task, so this timeout does not count it.
            error = self._pool.schedule(_import_status, timeout=self.timeout_s).result()
        except Exception as failure:  # noqa: BLE001 - e.g. the module calls os._exit at import
            self.close()
            raise ValueError(f"sandbox workers for {self.path} did not start: {_describe(failure)}") from failure
        if error is not None:
            self.close()
            raise ValueError(f"sandbox module {self.path} failed to import: {error}")

    def close(self) -> None:
        """Stop the workers (run() has waited for every call, so none is cut short)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None
        restore_main(self._hidden)
        self._hidden = None

    def run(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
        """Run every call (function name, keyword arguments) in the pool at once; outcomes in input order."""
        if self._pool is None:
            raise RuntimeError("Sandbox not started: use it as a context manager or call start()")
        started = time.perf_counter()
        futures: list[Future | Outcome] = []
        for name, arguments in calls:
            if not isinstance(arguments, dict) or not all(isinstance(key, str) for key in arguments):
                futures.append(Outcome(False, None, "TypeError: arguments must be a JSON object", 0.0))
            else:
                futures.append(self._pool.schedule(_call, args=(name, arguments), timeout=self.timeout_s))
        return [f if isinstance(f, Outcome) else self._outcome(f, started) for f in futures]

    def _outcome(self, future: Future, started: float) -> Outcome:
        try:
            ok, text, seconds = future.result()
        except FutureTimeout:
            return Outcome(False, None, f"Timeout: no result within {self.timeout_s:g} s", self.timeout_s)
        except ProcessExpired as crash:
            # When the worker died is unknown: the time since run() began is an upper bound.
            error = f"Crash: the worker process died (exit code {crash.exitcode})"
            return Outcome(False, None, error, time.perf_counter() - started)
        except Exception as failure:  # noqa: BLE001 - e.g. arguments that do not pickle
            return Outcome(False, None, _describe(failure), 0.0)
        return Outcome(True, text, None, seconds) if ok else Outcome(False, None, text, seconds)
