"""The local runner: runs a bundle job's tasks in dependency order, in one process.

The task graph is read from `resources/*.job.yml`, so the bundle stays the one list of what runs in which
order: each task's first wheel parameter names the registered stage it runs.
"""

from __future__ import annotations

import graphlib
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from lakesynth import bundle, registry, tables, tracking
from lakesynth.config import Config
from lakesynth.errors import ConfigError, LakesynthError, StageSkipped
from lakesynth.stage import RunContext, Stage

log = logging.getLogger(__name__)
DEFAULT_JOB = "lakesynth"


def find_project_root(start: Path) -> Path:
    for folder in [start, *start.parents]:
        if (folder / "databricks.yml").is_file():
            return folder
    raise ConfigError(f"no databricks.yml found in {start} or its parents: run lakesynth from the project folder")


def job_graph(root: Path, job: str = DEFAULT_JOB) -> dict[str, tuple[str, list[str]]]:
    """task_key -> (stage, [task_keys it depends on]) of one job of the bundle."""
    name, spec = bundle.job(bundle.load(root), job)
    return bundle.tasks(spec, f"resources/{name}.job.yml")


def job_graphs(root: Path) -> dict[str, dict[str, tuple[str, list[str]]]]:
    """Every job of the bundle: job -> its task graph."""
    return {
        name: bundle.tasks(spec, f"resources/{name}.job.yml") for name, spec in bundle.jobs(bundle.load(root)).items()
    }


def order(graph: dict[str, tuple[str, list[str]]]) -> list[str]:
    try:
        return list(graphlib.TopologicalSorter({k: deps for k, (_, deps) in graph.items()}).static_order())
    except graphlib.CycleError as exc:
        raise ConfigError(f"the tasks' depends_on form a cycle: {exc.args[1]}") from exc


def check(graph: dict[str, tuple[str, list[str]]], stages: dict[str, Stage], job: str) -> None:
    """Stop before anything runs when the job names an unknown stage or reads what nothing upstream writes."""
    problems = registry.graph_problems(graph, stages, f"job '{job}'")
    if problems:
        raise ConfigError("\n".join(problems))


def run(
    cfg: Config, stages: list[str] | None = None, *, root: Path | None = None, job: str = DEFAULT_JOB
) -> dict[str, Any]:
    """Run the job's tasks (or the named subset) and return the run summary."""
    graph = job_graph(root or find_project_root(Path.cwd()), job)
    registered = registry.default_stages()
    check(graph, registered, job)
    contracts = registry.contracts(registered)
    unknown = [s for s in stages or [] if s not in graph]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; the job defines: {', '.join(graph)}")
    summary: dict[str, Any] = {"run_id": cfg.run_id, "tables": {}, "files": {}, "stages": {}}
    ctx = RunContext(cfg, contracts)
    ctx.spark  # the engine starts (or is found) before any stage: a missing engine is not a stage's failure
    tracker = tracking.Tracker(cfg, ctx.rt).start()
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
            started = time.monotonic()
            try:
                result = registered[stage].run(ctx)
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
                "table": ctx.rt.fqn(name),
                "location": tables.location(ctx.rt, table, ctx.spark),
                "rows": tables.count(ctx.spark, ctx.rt, table),
            }
        tracker.finish(summary, ctx)
    finally:
        ctx.close()
    return summary


def _failed(started: float, error: str) -> dict[str, Any]:
    return {"status": "failed", "seconds": round(time.monotonic() - started, 3), "error": error}
