"""The local runner: runs a bundle job's tasks in dependency order, in one process.

The task graph is read from `resources/*.job.yml`, so the bundle stays the one list of what runs in which
order: each task's first wheel parameter names the registered stage it runs.

Where the jobs come from (`locate_jobs`): a `databricks.yml` in the working folder or one of its parents (the
project, as `databricks bundle` reads it), else the job files packaged in the installed wheel. A Databricks
`python_wheel_task` calls the `lakesynth` entry point from a folder that is not the bundle root, so the wheel
must carry the job graph (and the default config: `config.packaged_config()`).

Packaging, with one copy in git: `src/lakesynth/bundled/resources` and `src/lakesynth/bundled/conf` are
symbolic links to the repository's `resources/` and `conf/`. pyproject's package-data takes
`bundled/resources/*.job.yml` and `bundled/conf/**/*` through them, and setuptools copies the files the links
point to into the wheel (`pip wheel .`, `pip install .`, the bundle's artifact build), so the installed package
holds real files under `lakesynth/bundled/`. An editable install imports from `src/`, where the links lead to
the live files. No build step, no generated or duplicated YAML. A checkout made without symlink support (git
on Windows with `core.symlinks=false`) would build a wheel without them: tests/test_installed.py builds the
wheel, installs it and runs it from an empty folder, and fails then.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import graphlib
import json
import logging
import os
import shutil
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pyspark.sql import functions as F

from lakesynth.config import YAML_LOADER, Config, with_overrides
from lakesynth.core import budget, bundle, estimate, funnel, registry, run_log, tables
from lakesynth.core.bundle import DEFAULT_JOB, project_root
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.errors import ConfigError, LakesynthError, SchemaBusy, StageSkipped
from lakesynth.llm import serverless, stop
from lakesynth.report import notebook, tracking
from lakesynth.report import preview as report_preview
from lakesynth.tools import spec as toolspec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Jobs:
    """The bundle's jobs and where each was read from."""

    specs: dict[str, dict[str, Any]]  # job key -> job dict, the default job first
    files: dict[str, Path]  # job key -> the file that defines it
    packaged: bool  # read from the installed wheel, not from a project folder

    def graph(self, job: str = DEFAULT_JOB) -> dict[str, tuple[str, list[str]]]:
        """task_key -> (stage, [task_keys it depends on]) of one job."""
        name, spec = bundle.job({"resources": {"jobs": self.specs}}, job)
        return bundle.tasks(spec, str(self.files.get(name, name)))

    def settings(self, job: str = DEFAULT_JOB) -> dict[str, list[str]]:
        """task_key -> the fixed `--set` overrides its parameters carry (bundle.task_settings)."""
        _, spec = bundle.job({"resources": {"jobs": self.specs}}, job)
        return bundle.task_settings(spec)

    def graphs(self) -> dict[str, dict[str, tuple[str, list[str]]]]:
        """Every job: job -> its task graph."""
        return {name: self.graph(name) for name in self.specs}

    def describe(self, job: str = DEFAULT_JOB) -> str:
        """`job lakesynth from /…/lakesynth.job.yml (packaged)`, for the line a run starts with."""
        where = self.files.get(job)
        return f"job {job} from {where or 'nowhere'}" + (" (packaged)" if self.packaged else "")


def packaged_folder() -> Path:
    """The folder of job files packaged in the installed lakesynth (see the module docstring)."""
    return Path(str(resources.files("lakesynth") / "bundled" / "resources"))


def project_jobs(root: Path) -> Jobs:
    """The jobs of the bundle at `root`: databricks.yml with the files it includes."""
    merged, files = bundle.load_with_sources(root)
    return Jobs(bundle.jobs(merged), files, packaged=False)


def packaged_jobs() -> Jobs:
    """The job files packaged in the installed wheel (`resources/*.job.yml` of the project it was built from)."""
    folder = packaged_folder()
    specs: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.job.yml")):
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=YAML_LOADER) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the packaged job file: {exc}") from exc
        for key, spec in ((data.get("resources") or {}).get("jobs") or {}).items():
            specs[key] = spec
            files[key] = path
    if not specs:
        raise ConfigError(
            f"no databricks.yml in the working folder or its parents, and the installed lakesynth carries no job "
            f"files in {folder}: run lakesynth from the project folder, or reinstall it"
        )
    return Jobs(specs, files, packaged=True)


def locate_jobs(start: Path | None = None) -> Jobs:
    """The project's jobs when `start` (default: the working folder) is in a bundle, else the packaged ones."""
    root = project_root(start or Path.cwd())
    return project_jobs(root) if root else packaged_jobs()


def job_graph(root: Path, job: str = DEFAULT_JOB) -> dict[str, tuple[str, list[str]]]:
    """task_key -> (stage, [task_keys it depends on]) of one job of the bundle at `root`."""
    return project_jobs(root).graph(job)


def job_graphs(root: Path) -> dict[str, dict[str, tuple[str, list[str]]]]:
    """Every job of the bundle at `root`: job -> its task graph."""
    return project_jobs(root).graphs()


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
    cfg: Config,
    stages: list[str] | None = None,
    *,
    root: Path | None = None,
    job: str = DEFAULT_JOB,
    jobs: Jobs | None = None,
    on_stage: Callable[[RunContext, Stage, StageResult], None] | None = None,
    remember: bool = True,
    context: RunContext | None = None,
) -> dict[str, Any]:
    """Run the job's tasks (or the named subset) and return the run summary. The jobs are `jobs`, else the
    bundle at `root`, else `locate_jobs()` (the project around the working folder, or the packaged jobs).
    `on_stage` is called after each stage that ran (a preview cuts its units there); without `remember` the
    notebooks are not pointed at this run's schema (a preview's, dropped after). A `context` given (a preview's
    passes: one embedded teacher, one budget) is the caller's to close; the run closes its own."""
    jobs = jobs or (project_jobs(root) if root else locate_jobs())
    graph = jobs.graph(job)
    registered = registry.default_stages()
    check(graph, registered, job)
    contracts = registry.contracts(registered)
    unknown = [s for s in stages or [] if s not in graph]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; the job defines: {', '.join(graph)}")
    summary: dict[str, Any] = {"run_id": cfg.run_id, "tables": {}, "files": {}, "stages": {}}
    ctx = context or RunContext(cfg, contracts)
    with schema_lock(ctx.rt, cfg.run_id):
        return _run(ctx, graph, registered, stages, summary, jobs.settings(job), on_stage, remember, not context)


@contextlib.contextmanager
def schema_lock(rt: Runtime, run_id: str):
    """One local run at a time per schema: a second run stops at once and names the first, instead of both
    writing the same staging tables and journals. An OS file lock, so a killed run never leaves it behind. On
    Databricks the job's `max_concurrent_runs: 1` does this (a Volume has no file locks)."""
    if rt.databricks or "://" in rt.warehouse:
        yield
        return
    path = Path(rt.table_location("_lakesynth.lock"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its name just after taking the lock: give it a moment
                lock.seek(0)
                holder = lock.read().strip()
                if holder:
                    break
                time.sleep(0.05)
            holder = holder or "another lakesynth run"
            raise SchemaBusy(
                f"schema {rt.catalog}.{rt.schema} is in use by {holder}; wait for it to finish, "
                f"or run with another --schema"
            ) from None
        try:
            lock.seek(0)
            lock.truncate()
            started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            lock.write(f"run {run_id} (pid {os.getpid()} on {socket.gethostname()}, since {started})")
            lock.flush()
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(
    ctx: RunContext, graph, registered, stages, summary, settings=None, on_stage=None, remember=True, close=True
) -> dict[str, Any]:
    cfg = ctx.cfg
    _ = ctx.spark  # the engine starts (or is found) before any stage: a missing engine is not a stage's failure
    if ctx.rt.serving:  # standing in for Databricks serverless: its rule for UDFs holds here too, for this run
        serverless.arm()
    tracker = tracking.Tracker(cfg, ctx.rt).start()
    touched: dict[str, tables.Table] = {}
    not_run: dict[str, list[str]] = {}  # why -> the stages it stopped: one line each, after the stages

    def report(key: str, stage: str, files: dict[str, str] | None = None) -> None:
        """What a task did, in MLflow and in the run_log table."""
        tracker.stage(key, summary["stages"][key])
        run_log.record(ctx, key, registered.get(stage), summary["stages"][key], files or {})

    running: list[str] = []  # the task going on
    since: list[float] = [0.0]  # when it started

    def interrupted() -> None:
        """Ctrl-C (llm/stop.py): the task going on gets its run_log row (`stopped`), written past the engine, which
        stops on SIGINT (a statement to it then hangs: measured 20 s, no answer); the MLflow run KILLED, the task
        tagged `interrupted`."""
        try:
            if running:
                key, seconds = running[0], round(time.monotonic() - since[0], 3)
                entry = {"status": "stopped", "reason": STOPPED_BY_CTRL_C, "seconds": seconds}
                run_log.record_stopped(ctx, key, registered.get(graph[key][0]), entry)
        finally:
            tracker.kill(running[0] if running else None)

    stop.add_record(interrupted)
    try:
        for key in order(graph):
            stage, deps = graph[key]
            if stages and key not in stages:
                continue
            running[:], since[0] = [key], time.monotonic()
            stopped = _stopped(deps, summary["stages"], graph, registered)
            if stopped:
                summary["stages"][key] = {"status": "skipped", "reason": stopped, "stopped": True}
                not_run.setdefault(stopped, []).append(key)
                report(key, stage)
                continue
            started = time.monotonic()
            try:
                task_ctx = ctx.with_settings(settings[key]) if settings and key in settings else ctx
                pruned = task_ctx.prune(registered[stage])
                try:
                    result = registered[stage].execute(task_ctx)
                finally:  # a refused connection from a UDF is the cause of whatever the stage says
                    if serverless.armed():
                        serverless.check(key)
                if pruned:
                    result.metrics["pruned"] = pruned
            except StageSkipped as exc:  # never claims success: the summary says skipped, and why
                reason = _with_upstream(str(exc), deps, summary["stages"])
                summary["stages"][key] = {"status": "skipped", "reason": reason}
                print(f"{key}: skipped: {reason}", flush=True)
                report(key, stage)
                continue
            except LakesynthError as exc:
                summary["stages"][key] = _failed(started, str(exc))
                print(f"{key}: failed after {time.monotonic() - started:.1f} s\n{exc}", flush=True)
                report(key, stage)
                continue
            except Exception as exc:  # a bug or an engine failure: keep the trace, stop the dependents
                log.debug("stage %s crashed", key, exc_info=True)
                summary["stages"][key] = _failed(started, f"{type(exc).__name__}: {exc}")
                print(f"{key}: crashed after {time.monotonic() - started:.1f} s\n{traceback.format_exc()}", flush=True)
                report(key, stage)
                continue
            seconds = time.monotonic() - started
            made_by = {"model": result.model, "prompt_version": result.prompt_version}
            summary["stages"][key] = {
                "status": "ok",
                **{k: v for k, v in made_by.items() if v},
                "seconds": round(seconds, 3),
                "rows_in": result.rows_in,
                "rows_out": result.rows_out,
                "errors": result.errors,
                **result.metrics,
            }
            summary["files"].update(result.files)
            touched.update({t.name: t for t in result.tables})
            print(result.line(key, seconds), flush=True)
            report(key, stage, result.files)
            if on_stage:
                on_stage(task_ctx, registered[stage], result)
        running.clear()
        for why, keys in not_run.items():
            print(f"not run ({why}): {', '.join(keys)}", flush=True)
        ran = [graph[key][0] for key, entry in summary["stages"].items() if entry["status"] == "ok"]
        _funnel(ctx, summary, registered, [stage for stage, _ in graph.values()], ran)
        spend = budget.of(ctx)
        if spend.stages:
            summary["usage"] = spend.summary()
        if spend.stopped:  # the stages after the cap ran on what there was; a rerun sends what is pending
            summary["stopped"] = budget.STOPPED
            print(f"stopped: budget ({spend.describe()}); rerun with a higher cap to continue", flush=True)
        if summary["stages"]:
            touched[run_log.RUN_LOG.name] = run_log.RUN_LOG
        for name, table in touched.items():
            summary["tables"][name] = {
                "table": ctx.rt.fqn(name),
                "location": tables.location(ctx.rt, table, ctx.spark),
                "rows": tables.count(ctx.spark, ctx.rt, table),
            }
        tracker.finish(summary, ctx, {key: registered.get(graph[key][0]) for key in summary["stages"]})
        try:  # where this run wrote, for the notebooks (locally)
            if remember:
                notebook.remember(ctx.rt, cfg.run_id)
        except OSError as exc:  # a notebook convenience, never the run's failure
            log.warning("could not record where this run wrote, for the notebooks: %s", exc)
    except KeyboardInterrupt:
        stop.record_stop()
        raise
    finally:
        stop.remove_record(interrupted)
        serverless.disarm()
        if close:
            ctx.close()
    return summary


STOPPED_BY_CTRL_C = "interrupted (Ctrl-C): its finished requests are kept, a rerun sends the rest"


def _funnel(ctx: RunContext, summary: dict[str, Any], registered: dict[str, Stage], names: list[str], ran) -> None:
    """The yield funnel of the job (the stages `names`; core/funnel.py) into the summary, its line and warnings
    onto stdout, and a `funnel` row into run_log, when a stage that `ran` ends a chain (funnel.ends): a run that
    stops before its end says nothing of rows still on their way (funnel.of_run, for a report, counts them as
    pending). Describing the run never fails it: a problem is a warning."""
    if not funnel.ends(registered, names, ran):
        return
    found, problem = funnel.guarded(lambda: funnel.summary(ctx, registered, names))
    if problem:
        summary.setdefault("warnings", []).append(problem)
        print(f"warning: {problem}", flush=True)
        return
    if not found:
        return
    summary["funnel"] = found
    print(funnel.line(found), flush=True)
    for warning in found["warnings"]:
        print(f"warning: {warning}", flush=True)
    summary.setdefault("warnings", []).extend(found["warnings"])
    run_log.record(ctx, "funnel", None, {"status": "ok", "funnel": found}, {})


def goes_on_after_skip(stage: Stage | None) -> bool:
    """Whether a stage's dependents run when it is skipped (off, or its input absent): a check, whose verdict
    tables are all it writes (a row it did not judge reads as not run, and the rows go on), or a stage that
    writes no table (a fine-tune: its dependents look for its files themselves, and say why they find none).
    A skipped stage that writes the rows its dependents read leaves them nothing current to work on."""
    return stage is not None and all(t.verdict_of for t in stage.writes)


def _stopped(deps: list[str], done: dict[str, dict], graph, registered: dict[str, Stage]) -> str:
    """Why a task cannot run, or "": a dependency failed, was stopped itself (its cause is passed on), or was
    skipped having written none of the rows this task reads. Only these stop it: a skipped check does not."""
    reasons = []
    for dep in deps:
        entry = done.get(dep, {})
        if entry.get("status") == "failed":
            reasons.append(f"{dep} failed")
        elif entry.get("stopped"):
            reasons.append(entry["reason"])
        elif entry.get("status") == "skipped" and not goes_on_after_skip(registered.get(graph[dep][0])):
            reasons.append(f"nothing to work on: {dep} skipped: {entry['reason']}")
    return "; ".join(dict.fromkeys(reasons))


def _with_upstream(reason: str, deps: list[str], done: dict[str, dict]) -> str:
    """A skip's reason, with the skipped dependency's own reason where it is the cause and not already said."""
    upstream = [
        f"{dep} skipped: {done[dep]['reason']}"
        for dep in deps
        if done.get(dep, {}).get("status") == "skipped" and done[dep].get("reason", "") not in reason
    ]
    return f"{reason} ({'; '.join(upstream)})" if upstream else reason


def _failed(started: float, error: str) -> dict[str, Any]:
    return {"status": "failed", "seconds": round(time.monotonic() - started, 3), "error": error}


# A preview runs every generation and check stage of a job, never these: they train, evaluate or publish.
PREVIEW_SKIPS = ("finetune", "evaluate", "export", "tool_export", "tool_evaluate")
# The tables whose rows are a job's units: a preview keeps n of them, and a full run's estimate scales by them.
PREVIEW_UNITS = {"seed_questions": "seeds", "taxonomy_leaves": "leaves", "tools": "tools"}
# A shown preview's first pass carries one row of each of these (a unit's generated rows) through the stages after
# them, so its first example waits for one answer, not the unit's every; the other rows are held aside and put back
# before the second pass, which pays only for what the first did not ask. The top-up stages would ask again for
# the rows held aside: the first pass leaves them out.
PREVIEW_FIRST = ("synthetic_questions", "leaf_pairs", "tool_calls")
PREVIEW_FIRST_SKIPS = ("topup", "leaf_topup")
# The first pass asks its question's answer with at most this many tokens (a first look: llm.Call.reply_cap), so the
# first example never waits on a long answer and its retry: an answer that ends within them is the full request's
# answer too (the bank sample's median is 137 tokens; 256 take the embedded teacher about 13 s on 2 cores). A longer
# one is asked in full in the second pass, and the first pass goes on with the unit's next question, up to
# FIRST_TRIES of them.
FIRST_LOOK = {"synthetic_responses": 256}
FIRST_TRIES = 3


def preview(
    cfg: Config,
    *,
    n: int = 3,
    job: str = DEFAULT_JOB,
    jobs: Jobs | None = None,
    save: bool = True,
    show: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Run the job's generation and check stages on `n` of its units in a scratch schema beside the job's, dropped
    after: the job's own tables are never touched. Returns the examples with their verdicts (`frame`, pandas), the
    run `summary` and the `estimate` of a full run, which `save` keeps beside the job's tables (estimate.save).
    With `show`, the first unit's first generated row (PREVIEW_FIRST; the tools job's first call, its n tools'
    calls generated) goes through every stage first and its example is shown (`show(frame)`) while the others are
    made, then the others' (one teacher, and one measure of what both passes sent: no request is sent twice)."""
    if n < 1:
        raise ConfigError(f"preview: -n must be at least 1 (got {n})")
    jobs = jobs or locate_jobs()
    scratch = f"{cfg.schema_}_preview_{uuid.uuid4().hex[:8]}"
    pcfg = with_overrides(cfg, [f"schema={scratch}", "mlflow.enabled=false"]).model_copy(
        update={"run_id": f"preview-{cfg.run_id}"}
    )
    units: dict[str, int] = {}
    graph = jobs.graph(job)
    tools = "tools" in [stage for stage, _ in graph.values()]
    # The units of each pass. A tool's generation requests offer the other tools and decode against all their
    # parameters, so they change with the tools kept: the tools job's first pass keeps all n, or the second pays again.
    passes = [n if tools else 1, n] if show else [n]
    cut = passes[0]
    held: dict[str, tuple[tables.Table, Any]] = {}  # the first pass's rows held aside, by table
    tried: set[str] = set()  # the rows the first pass carried, by key: one each try
    first_pass = False

    def keep_n(ctx: RunContext, stage: Stage, result: StageResult) -> None:
        for table in stage.writes:
            if table.name in PREVIEW_UNITS:
                rows = tables.read(ctx.spark, ctx.rt, table)
                units[table.name] = rows.count()
                first = rows.orderBy(table.key).limit(cut)
            elif first_pass and table.name in PREVIEW_FIRST:
                rows = tables.read(ctx.spark, ctx.rt, table)
                untried = rows.where(~F.col(table.key).isin(sorted(tried))) if tried else rows
                picked = [str(r[0]) for r in untried.select(table.key).orderBy(table.key).limit(1).collect()]
                tried.update(picked)
                first = rows.where(F.col(table.key).isin(picked))
                rest = rows.join(first.select(table.key), table.key, "left_anti")
                held[table.name] = (table, tables.materialize(ctx.spark, ctx.rt, f"preview_held_{table.name}", rest))
                each.reply_caps = FIRST_LOOK  # the stages after this one look first
            else:
                continue
            first = tables.materialize(ctx.spark, ctx.rt, f"preview_{table.name}", first)
            tables.overwrite(ctx.spark, ctx.rt, table, first, run_id=ctx.cfg.run_id)

    tasks = [key for key, (stage, _) in graph.items() if stage not in PREVIEW_SKIPS]
    ctx = RunContext(pcfg, registry.contracts(registry.default_stages()))
    shown: set[str] = set()

    def dropped() -> None:
        """Ctrl-C (llm/stop.py): the engine is stopping, so the scratch schema's folder goes without it."""
        if not ctx.rt.databricks:
            stop.drop_journals(str(ctx.rt.schema_dir))  # a request finishing after would write its journal there
            shutil.rmtree(ctx.rt.schema_dir, ignore_errors=True)

    stop.add_record(dropped)
    number = 0
    try:
        while number < len(passes):
            cut = passes[number]
            first_pass = number == 0 and len(passes) > 1
            for table, rest in held.values():  # the rows held aside are back (for the second pass, or the next try)
                tables.upsert(ctx.spark, ctx.rt, table, rest, run_id=pcfg.run_id)
            held.clear()
            each = ctx.with_settings(_preview_tools(pcfg, cut) if tools else [])  # one teacher, one budget
            todo = [key for key in tasks if not (first_pass and graph[key][0] in PREVIEW_FIRST_SKIPS)]
            summary = run(each.cfg, todo, job=job, jobs=jobs, on_stage=keep_n, remember=False, context=each)
            frame = report_preview.examples(ctx.spark, ctx.rt, ctx.contracts)
            fresh = frame[~frame["key"].isin(shown)]
            if first_pass and "error" in fresh:  # an answer longer than the first look: shown once asked in full
                fresh = fresh[fresh["error"].isna()]
            if show and len(fresh):
                show(fresh)
                shown |= set(fresh["key"])
            if any(entry["status"] == "failed" for entry in summary["stages"].values()):
                break  # the other units would fail alike: the failure is the preview's answer
            if first_pass and not len(fresh) and held and len(tried) < FIRST_TRIES:
                continue  # its answer ran past the first look: the next question of the unit
            number += 1
    finally:
        stop.remove_record(dropped)
        try:
            if not stop.requested():  # stopped, the engine answers no statement: the record removed the folder
                tables.drop_schema(ctx.spark, ctx.rt)
        finally:
            ctx.close()  # the teacher and sandboxes, stopped or not, as a run closes its own
    unit_table = next((t for t in PREVIEW_UNITS if t in units), None)
    full = units.get(unit_table, n) if unit_table else n
    made = estimate.build(
        cfg,
        job=job,
        summary=summary,
        n=min(cut, full),  # the units previewed: all n, or the first one when its pass failed
        units=full,
        unit=PREVIEW_UNITS.get(unit_table, "units"),
        examples=len(frame),
    )
    failed = any(entry["status"] == "failed" for entry in summary["stages"].values())
    if save and not failed:  # a failed stage's figures estimate nothing; the last good estimate stays
        estimate.save(Runtime.resolve(cfg), made)
    return {"frame": frame, "summary": summary, "estimate": made}


def _preview_tools(cfg: Config, n: int) -> list[str]:
    """The function-calling job's preview overrides: its seed pairs and calls cut to those of the n tools the
    preview keeps (the first by name, as `keep_n` keeps them), copied into the scratch schema's folder."""
    spec = cfg.tools.spec or cfg.tools.functions
    if not spec:
        return []
    names = set(toolspec.tool_names(spec)[:n])
    folder = Path(Runtime.resolve(cfg).files_dir("_preview"))
    cut = [
        f"tools.{key}={json.dumps(toolspec.pairs_of(path, names, folder / f'{key}-{n}.jsonl'))}"
        for key in ("seeds", "calls")
        if (path := getattr(cfg.tools, key))
    ]
    return cut
