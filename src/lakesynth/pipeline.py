"""The local runner: runs the bundle job's tasks in dependency order, in one process.

The task graph is read from `resources/*.job.yml`, so the bundle stays the one list of stages:
each task's first wheel parameter names the stage it runs.
"""

from __future__ import annotations

import contextlib
import graphlib
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lakesynth import bundle, engine, tables, tracking
from lakesynth.config import Config
from lakesynth.errors import ConfigError, LakesynthError, StageSkipped
from lakesynth.report import StageResult

log = logging.getLogger(__name__)
JOB_FILE = "resources/lakesynth.job.yml"


def stage_functions() -> dict[str, Callable[..., StageResult]]:
    """Stage name -> its `run(spark, cfg, ctx)`; the one registry of stages, built on demand."""
    from lakesynth import chat_jsonl, finetune, questions, responses, seeds

    return {
        "seed": seeds.run,
        "questions": questions.run,
        "responses": responses.run,
        "format": chat_jsonl.run,
        "finetune": finetune.run,
    }


def find_project_root(start: Path) -> Path:
    for folder in [start, *start.parents]:
        if (folder / "databricks.yml").is_file():
            return folder
    raise ConfigError(f"no databricks.yml found in {start} or its parents: run lakesynth from the project folder")


def job_graph(root: Path) -> dict[str, tuple[str, list[str]]]:
    """task_key -> (stage, [task_keys it depends on]) from the bundle's one job."""
    _, job = bundle.job(bundle.load(root))
    graph = {}
    for task in job.get("tasks", []):
        params = (task.get("python_wheel_task") or {}).get("parameters") or []
        if not params:
            raise ConfigError(
                f"{JOB_FILE}: task '{task['task_key']}' has no python_wheel_task parameters naming a stage"
            )
        graph[task["task_key"]] = (params[0], [d["task_key"] for d in task.get("depends_on", [])])
    return graph


def order(graph: dict[str, tuple[str, list[str]]]) -> list[str]:
    try:
        return list(graphlib.TopologicalSorter({k: deps for k, (_, deps) in graph.items()}).static_order())
    except graphlib.CycleError as exc:
        raise ConfigError(f"{JOB_FILE}: the tasks' depends_on form a cycle: {exc.args[1]}") from exc


class RunContext:
    """What stages share within one run: the Spark session and the teacher endpoint, started lazily."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._stack = contextlib.ExitStack()
        self._endpoint = None

    @property
    def spark(self):
        return engine.get_spark(self.cfg.warehouse)

    def endpoint(self):
        from lakesynth import llm

        if self._endpoint is None:
            self._endpoint = self._stack.enter_context(llm.open_endpoint(self.cfg.teacher))
        return self._endpoint

    def close(self) -> None:
        self._stack.close()


def run(cfg: Config, stages: list[str] | None = None, *, root: Path | None = None) -> dict[str, Any]:
    """Run the job's tasks (or the named subset) and return the run summary."""
    graph = job_graph(root or find_project_root(Path.cwd()))
    functions = stage_functions()
    unknown = [s for s in stages or [] if s not in graph]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; the job defines: {', '.join(graph)}")
    summary: dict[str, Any] = {"run_id": cfg.run_id, "tables": {}, "files": {}, "stages": {}}
    ctx = RunContext(cfg)
    tracker = tracking.Tracker(cfg).start()
    touched: dict[str, tables.Table] = {}
    try:
        for key in order(graph):
            stage, deps = graph[key]
            if stages and key not in stages:
                continue
            blocked = [d for d in deps if summary["stages"].get(d, {}).get("status") in ("failed", "skipped")]
            if blocked:
                summary["stages"][key] = {"status": "skipped", "reason": f"{', '.join(blocked)} did not succeed"}
                print(f"{key}: skipped ({', '.join(blocked)} did not succeed)", flush=True)
                tracker.stage(key, summary["stages"][key])
                continue
            if stage not in functions:
                raise ConfigError(f"{JOB_FILE}: task '{key}' runs unknown stage '{stage}'")
            started = time.monotonic()
            try:
                result = functions[stage](ctx.spark, cfg, ctx)
            except StageSkipped as exc:  # never claims success: the summary says skipped, and why
                summary["stages"][key] = {"status": "skipped", "reason": str(exc)}
                print(f"{key}: skipped: {exc}", flush=True)
                tracker.stage(key, summary["stages"][key])
                continue
            except LakesynthError as exc:
                summary["stages"][key] = _failed(started, str(exc))
                print(f"{key}: failed after {time.monotonic() - started:.1f} s\n{exc}", flush=True)
                tracker.stage(key, summary["stages"][key])
                continue
            except Exception as exc:  # a bug or an engine failure: keep the trace, stop the dependents
                log.debug("stage %s crashed", key, exc_info=True)
                summary["stages"][key] = _failed(started, f"{type(exc).__name__}: {exc}")
                print(f"{key}: crashed after {time.monotonic() - started:.1f} s\n{traceback.format_exc()}", flush=True)
                tracker.stage(key, summary["stages"][key])
                continue
            seconds = time.monotonic() - started
            summary["stages"][key] = {
                "status": "ok",
                "seconds": round(seconds, 3),
                "rows_in": result.rows_in,
                "rows_out": result.rows_out,
                "errors": result.errors,
                **result.metrics,
            }
            summary["files"].update(result.files)
            touched.update({t.name: t for t in result.tables})
            print(result.line(key, seconds), flush=True)
            tracker.stage(key, summary["stages"][key])
        for name, table in touched.items():
            summary["tables"][name] = {
                "table": cfg.fqn(name),
                "location": tables.location(cfg, table, ctx.spark),
                "rows": tables.count(ctx.spark, cfg, table),
            }
        tracker.finish(summary, ctx.spark, cfg)
    finally:
        ctx.close()
    return summary


def _failed(started: float, error: str) -> dict[str, Any]:
    return {"status": "failed", "seconds": round(time.monotonic() - started, 3), "error": error}
