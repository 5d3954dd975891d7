"""Call format check: each row of `tool_calls` against the full JSON Schema of the tools it calls ->
`call_format_verdicts`.

Every call must name a tool of `tools`, with arguments that are a JSON object valid against that tool's
`parameters` (jsonschema, Draft 2020-12, with its format checker): required keys, types (an integer is a number,
a boolean is neither), enums, bounds, patterns and lengths, array sizes and uniqueness, `additionalProperties`,
`if`/`then`, nested objects. A row that names its BFCL category must have the calls it allows (irrelevance: none;
simple: one; parallel: two or more), else `category_mismatch`. `issues` lists every failure (call, path, rule,
message; `toolspec.call_issues`); `drop_reason` names the first rule, e.g. `format:missing_required`. An empty list
of calls is a valid answer (no tool fits the query).
Runs on the executors: each batch builds its validators once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import pandas as pd
from pydantic import Field
from pyspark.sql import functions as F

from lakesynth import tables, toolspec
from lakesynth.config import Section
from lakesynth.stage import RunContext, Stage, StageResult
from lakesynth.tables import S


class CallFormatConfig(Section):
    enabled: bool = Field(True, description="Check every call against its tool's JSON Schema.")


TABLE = tables.verdict(
    "call_format_verdicts", [("call_id", S), ("source_id", S), ("issues", S)], judges="tool_calls", key="call_id"
)
def _check(batches: Iterator[pd.DataFrame], *, tools: dict[str, str]) -> Iterator[pd.DataFrame]:
    checks = toolspec.validators(tools)
    for batch in batches:
        found = [
            toolspec.call_issues(json.loads(c) if c else None, p, checks, k)
            for c, p, k in zip(batch["calls"], batch["problem"], batch["category"])
        ]
        yield pd.DataFrame(
            {
                "call_id": batch["call_id"],
                "source_id": batch["source_id"],
                "issues": [json.dumps(f, ensure_ascii=False) if f else None for f in found],
                "keep": [not f for f in found],
                "drop_reason": [f"format:{f[0]['rule']}" if f else None for f in found],
            }
        )


def run(ctx: RunContext) -> StageResult:
    if not ctx.cfg.tools.format.enabled:
        return StageResult(metrics={"disabled": "tools.format.enabled is false"})
    tools = {r.name: r.parameters for r in ctx.read("tools").select("name", "parameters").collect()}
    calls = ctx.read("tool_calls", kept=False)
    schema = "call_id string, source_id string, issues string, keep boolean, drop_reason string"
    checked = calls.select("call_id", "source_id", "calls", "problem", "category").mapInPandas(
        functools.partial(_check, tools=tools), schema
    )
    rows = checked.withColumn("run_id", F.lit(ctx.cfg.run_id)).withColumn("created_at", F.current_timestamp())
    fqn = tables.ensure(ctx.spark, ctx.rt, TABLE)
    tables.conform(rows, TABLE).write.mode("overwrite").insertInto(fqn)  # cheap to check again, always whole
    written = tables.read(ctx.spark, ctx.rt, TABLE)
    counts = tables.verdict_counts(written)
    n = written.count()
    return StageResult(rows_in=n, rows_out=n, tables=[TABLE], metrics=counts)


STAGE = Stage(
    name="call_format",
    help="check every call against its tool's full JSON Schema into call_format_verdicts",
    run=run,
    reads=("tools", "tool_calls"),
    writes=(TABLE,),
    config=CallFormatConfig,
    section="tools.format",
)
