"""Call format check: each row of `tool_calls` against the full JSON Schema of the tools it calls ->
`call_format_verdicts`.

Every call must name a tool of `tools`, with arguments that are a JSON object valid against that tool's
`parameters` (jsonschema, Draft 2020-12, with its format checker): required keys, types (an integer is a number,
a boolean is neither), enums, bounds, patterns and lengths, array sizes and uniqueness, `additionalProperties`,
`if`/`then`, nested objects. A row that names its BFCL category must have the calls it allows (irrelevance: none;
simple: one; parallel: two or more), else `category_mismatch`. `issues` lists every failure (call, path, rule,
message; `toolspec.call_issues`); `drop_reason` names the first rule, e.g. `format:missing_required`. An empty list
of calls is a valid answer (no tool fits the query).
Runs on the executors. On the embedded engine, whose Python UDFs share the driver's interpreter, a large table is
checked by a pool of processes (`tools.format.processes`), so the check uses every core.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
from pydantic import Field

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import S
from lakesynth.tools import spec as toolspec


class CallFormatConfig(Section):
    enabled: bool = Field(True, description="Check every call against its tool's JSON Schema.")
    processes: int = Field(
        0, ge=0, le=64, description="Processes checking in parallel on the embedded engine (0: one per core)."
    )


TABLE = tables.verdict(
    "call_format_verdicts", [("call_id", S), ("source_id", S), ("issues", S)], judges="tool_calls", key="call_id"
)
# Pools of checking processes open in this process, by token: a stage run opens one for its query (see `run`).
_POOLS: dict[str, tuple[ProcessPoolExecutor, int]] = {}
_checks: dict | None = None  # a pool worker's validators


def _init_worker(tools: dict[str, str]) -> None:
    global _checks
    _checks = toolspec.validators(tools)


def _issues(calls: list, problems: list, categories: list, checks: dict | None = None) -> list[list[dict]]:
    checks = checks if checks is not None else _checks
    return [
        toolspec.call_issues(json.loads(c) if c else None, p, checks, k) for c, p, k in zip(calls, problems, categories)
    ]


def _check(batches: Iterator[pd.DataFrame], *, tools: dict[str, str], pool: str = "") -> Iterator[pd.DataFrame]:
    """mapInPandas body. A batch is checked in the stage's pool of processes when this is the process that opened
    it (the embedded engine runs Python UDFs in the driver's process, one at a time under its interpreter lock),
    else here (a cluster's executors run one Python worker per core already)."""
    workers, n = _POOLS.get(pool, (None, 1))
    checks = None if workers else toolspec.validators(tools)
    for batch in batches:
        columns = [batch["calls"].tolist(), batch["problem"].tolist(), batch["category"].tolist()]
        if workers:
            size = -(-len(batch) // n) or 1
            parts = [workers.submit(_issues, *[c[i : i + size] for c in columns]) for i in range(0, len(batch), size)]
            found = [issues for part in parts for issues in part.result()]
        else:
            found = _issues(*columns, checks=checks)
        yield pd.DataFrame(
            {
                "call_id": batch["call_id"],
                "source_id": batch["source_id"],
                "issues": [json.dumps(f, ensure_ascii=False) if f else None for f in found],
                "keep": [not f for f in found],
                "drop_reason": [f"format:{f[0]['rule']}" if f else None for f in found],
            }
        )


@contextlib.contextmanager
def checking_pool(tools: dict[str, str], workers: int) -> Iterator[str]:
    """A pool of `workers` checking processes for this stage run, named by the token `_check` looks it up by
    ("" and no pool for one worker)."""
    if workers <= 1:
        yield ""
        return
    from lakesynth.tools import sandbox  # pebble's: imported where a pool is opened, as call_execution does

    token, hidden = uuid.uuid4().hex, sandbox.hide_main()
    context = multiprocessing.get_context(sandbox.start_method())
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(tools,))
    _POOLS[token] = (pool, workers)
    try:
        yield token
    finally:
        del _POOLS[token]
        pool.shutdown()
        sandbox.restore_main(hidden)


def run(ctx: RunContext) -> StageResult:
    settings = ctx.cfg.tools.format
    tools = {r.name: r.parameters for r in ctx.read("tools").select("name", "parameters").collect()}
    calls = ctx.read("tool_calls", kept=False)
    schema = "call_id string, source_id string, issues string, keep boolean, drop_reason string"
    n = calls.count()
    # On Databricks the executors' Python workers check in parallel; a pool is for the embedded engine, and only
    # for enough rows to pay for starting it.
    workers = 1 if ctx.rt.databricks or n < POOL_MIN_ROWS else settings.processes or os.cpu_count() or 1
    with checking_pool(tools, workers) as pool:
        checked = calls.select("call_id", "source_id", "calls", "problem", "category").mapInPandas(
            functools.partial(_check, tools=tools, pool=pool), schema
        )
        tables.overwrite(ctx.spark, ctx.rt, TABLE, checked, run_id=ctx.cfg.run_id)  # cheap to check again, always whole
    written = tables.read(ctx.spark, ctx.rt, TABLE)
    counts = tables.verdict_counts(written)
    return StageResult(rows_in=n, rows_out=n, tables=[TABLE], metrics={**counts, "workers": workers})


POOL_MIN_ROWS = 50_000  # below this, starting the processes costs more than they save (benchmarks, section 7)


STAGE = Stage(
    name="call_format",
    help="check every call against its tool's full JSON Schema into call_format_verdicts",
    run=run,
    reads=("tools", "tool_calls"),
    writes=(TABLE,),
    config=CallFormatConfig,
    section="tools.format",
)
