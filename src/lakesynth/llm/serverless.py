"""Databricks serverless' rule for UDFs, enforced on the local engine when it stands in for Databricks.

Serverless compute runs every task of lakesynth's jobs, and there "User-defined functions (UDFs) cannot access the
internet" (the serverless limitations page). Locally UDFs may, so a stage that calls an endpoint from a UDF would pass
here and stop on Databricks. With LAKESYNTH_EMULATE_SERVERLESS set (runtime.py) the local engine follows the
platform's rule: a socket connection opened while a UDF runs is refused and recorded, and the task fails after the
stage (`check`). The one exception is the local stand-in of the built-in `ai_query`, which is the platform's own
batch inference on Databricks.

How a UDF is recognised: the embedded engine runs UDFs on its own threads, under pyspark's `worker.py`; a thread a UDF
starts (the pool's event loop) is marked with where it was started (`mark_thread`).
"""

from __future__ import annotations

import sys
import threading
from types import FrameType

from lakesynth.errors import StageError

_WORKER = ("pyspark/worker.py", "pyspark\\worker.py")
_allowed: set = set()  # code objects of the stand-in of the built-in ai_query (`allow`)
_state = {"installed": False, "armed": False}
_violations: list[str] = []


class NetworkFromUDF(StageError):
    """A UDF opened a network connection, which Databricks serverless refuses."""


def where(frame: FrameType | None) -> str:
    """'udf', 'builtin' (inside the ai_query stand-in) or 'driver', from a thread's frames."""
    found = "driver"
    while frame is not None:
        if frame.f_code in _allowed:
            return "builtin"
        if frame.f_code.co_filename.endswith(_WORKER):
            found = "udf"
        frame = frame.f_back
    return found


def allow(function) -> None:
    """Let `function` (the local stand-in of the built-in ai_query) call endpoints from a UDF."""
    _allowed.add(function.__code__)


def mark_thread(thread: threading.Thread) -> None:
    """Record on `thread` (before it starts) where the code starting it runs, so its connections count as that."""
    if _state["armed"]:
        thread.lakesynth_origin = where(sys._getframe(1))  # type: ignore[attr-defined]


def _hook(event: str, args: tuple) -> None:
    if event != "socket.connect" or not _state["armed"]:
        return
    origin = getattr(threading.current_thread(), "lakesynth_origin", None) or where(sys._getframe(1))
    if origin == "udf":
        address = args[1] if len(args) > 1 else "?"
        _violations.append(f"a UDF opened a connection to {address} on thread {threading.current_thread().name}")
        raise PermissionError(f"serverless: UDFs cannot access the network (connection to {address} refused)")


def arm() -> None:
    """Enforce the rule in this process from now on (an audit hook cannot be removed; `disarm` turns it off)."""
    if not _state["installed"]:
        sys.addaudithook(_hook)
        _state["installed"] = True
    _state["armed"] = True


def disarm() -> None:
    _state["armed"] = False


def armed() -> bool:
    return _state["armed"]


def check(stage: str) -> None:
    """Fail `stage` if a UDF tried to open a connection while it ran (the rows it wrote carry the refusals)."""
    if _violations:
        found, count = _violations[0], len(_violations)
        _violations.clear()
        raise NetworkFromUDF(
            f"{stage}: {count} network connection(s) from a UDF, which Databricks serverless refuses ({found}); "
            "model calls from Spark must go through ai_query, other calls from the driver"
        )
