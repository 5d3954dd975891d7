"""Call arguments check: each row of `tool_calls` against its own query -> `call_argument_verdicts`.

A teacher fills a call's arguments with values the user never gave: a postcode, a phone number, an account id, an
amount. Such a pair teaches the student to make them up. A call argument that is a number, or a string with a digit
in it (an identifier, a postcode, a phone number, a date), is invented when the query does not state it (case,
spaces and punctuation aside; a number or a date in any format) and it is neither the parameter's default nor one
of its enum values; nested objects and arrays are walked (`recipient.phone`). Words without digits are left to the
semantic check, as they may paraphrase the query. `drop_reason` is `invented_argument:<name>` of the first; every
invented argument is listed. No judge: it runs row by row on the executors (mapInPandas), derived whole each run.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import pandas as pd
from pydantic import Field

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import S
from lakesynth.quality import rules

MODEL = "rule:invented_argument"


class CallArgumentsConfig(Section):
    enabled: bool = Field(True, description="Drop a pair whose call states a value (a number, an id) its query lacks.")


TABLE = tables.verdict(
    "call_argument_verdicts",
    [("call_id", S), ("source_id", S), ("invented", S), ("reasoning", S), ("model", S)],
    judges="tool_calls",
    key="call_id",
)
SCHEMA = ", ".join(f"`{n}` {t.simpleString()}" for n, t in TABLE.columns if n not in tables.LINEAGE_NAMES)


def invented(query: str, calls: list, parameters: dict[str, dict]) -> list[dict]:
    """The invented arguments of one row's calls: call (1-based), argument name and value."""
    given = rules.Given(query)
    found = []
    for i, call in enumerate(calls or [], start=1):
        schema = parameters.get(call.get("name"), {})
        if not isinstance(call.get("arguments"), dict):
            continue  # the format check drops it
        for name, value, own in rules.argument_values(call["arguments"], schema, defs=schema.get("$defs", {})):
            if rules.invented_argument(value, own, given):
                found.append({"call": i, "name": name, "value": value})
    return found


def _check(batches: Iterator[pd.DataFrame], *, tools: dict[str, str]) -> Iterator[pd.DataFrame]:
    parameters = {name: json.loads(p) for name, p in tools.items()}
    for batch in batches:
        found = [
            invented(q or "", json.loads(c) if c and not p else [], parameters)
            for q, c, p in zip(batch["query"], batch["calls"], batch["problem"])
        ]
        yield pd.DataFrame(
            {
                "call_id": batch["call_id"],
                "source_id": batch["source_id"],
                "invented": [json.dumps(f, ensure_ascii=False) if f else None for f in found],
                "reasoning": [
                    "; ".join(f"call {f['call']}: {f['name']}={json.dumps(f['value'])} is not in the query" for f in fs)
                    or "every number and identifier is in the query, a default or an enum value"
                    for fs in found
                ],
                "model": MODEL,
                "keep": [not f for f in found],
                "drop_reason": [f"invented_argument:{f[0]['name']}" if f else None for f in found],
            }
        )


def run(ctx: RunContext) -> StageResult:
    if not ctx.cfg.tools.arguments.enabled:  # no verdicts, so none left from an earlier run drops a row
        tables.overwrite(ctx.spark, ctx.rt, TABLE, ctx.spark.createDataFrame([], SCHEMA), run_id=ctx.cfg.run_id)
        return StageResult(tables=[TABLE], metrics={"disabled": "tools.arguments.enabled is false"})
    tools = {r.name: r.parameters for r in ctx.read("tools").select("name", "parameters").collect()}  # the spec
    calls = ctx.read("tool_calls", kept=False).select("call_id", "source_id", "query", "calls", "problem")
    checked = calls.mapInPandas(functools.partial(_check, tools=tools), SCHEMA)
    tables.overwrite(ctx.spark, ctx.rt, TABLE, checked, run_id=ctx.cfg.run_id)
    written = tables.read(ctx.spark, ctx.rt, TABLE)
    n = written.count()
    return StageResult(rows_in=n, rows_out=n, tables=[TABLE], metrics=tables.verdict_counts(written))


STAGE = Stage(
    name="call_arguments",
    help="check every call's numbers and identifiers against its query, into call_argument_verdicts",
    run=run,
    reads=("tools", "tool_calls"),
    writes=(TABLE,),
    config=CallArgumentsConfig,
    section="tools.arguments",
    off=lambda cfg: "",  # runs when switched off too, to clear its verdicts (run)
)
