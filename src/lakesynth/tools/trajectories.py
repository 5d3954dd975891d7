"""Trajectories: each pair whose calls passed the format and execution checks, finished with the assistant's final
answer -> `tool_trajectories`.

Off by default (`tools.trajectories.enabled`). The sandbox's results of the calls become `tool` messages (tool_format
writes them, each with its call's `tool_call_id`), and the teacher writes the reply the assistant gives from them, a
structured output per pair; a rerun asks only for what is missing. Then a deterministic check (answer_check.py) drops
an answer that states a number, date, amount or identifier that is in neither the results nor the query, as
`invented:<value>`; it is applied again to every stored answer on each run, so a changed check costs no call. A reply
that does not parse is `trajectory_error`, asked again on the next run. The semantic judge (call_semantic) then sees
the answer too, and fails one that does not use the results. A query no tool fits has no results to answer from and
is not asked; without implementations there are no results, and the stage is skipped.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.core.templates import render
from lakesynth.errors import StageSkipped
from lakesynth.tools import answer_check

TEMPLATE = """You write the last message of an assistant that answers requests by calling functions (tools).

The user's request:
{{ query }}

The assistant called these tools, and this is what each returned:
{{ steps }}

Write "answer": the assistant's reply to the user, from what the tools returned, in one to three sentences. Give the
values the tools returned exactly as they are written there. State no number, date, amount or identifier that is in
neither the request nor the results, and do not mention the tools."""


class TrajectoriesConfig(LLMStageConfig):
    enabled: bool = Field(
        False, description="Finish each checked pair: the calls' results as tool messages, then the final answer."
    )
    template: str = Field(TEMPLATE, description="The final answer's Jinja prompt (query, steps: calls and results).")
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(384, ge=16, description="Completion token limit.")


class FinalAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: str = Field(min_length=1, description="The assistant's reply to the user, from the results")


TABLE = tables.verdict(
    "tool_trajectories",
    [("call_id", S), ("source_id", S), ("query", S), ("calls", S), ("results", S), ("answer", S), ("invented", S)]
    + tables.LLM_ACCOUNTING,
    judges="tool_calls",
    key="call_id",
)


def steps(calls: str, results: str) -> str:
    """The calls and what each returned, one per line, as the teacher reads them."""
    returned = answer_check.returned(results)
    return "\n".join(
        f"{i}. {c['name']}({json.dumps(c['arguments'], ensure_ascii=False, sort_keys=True)}) returned "
        f"{json.dumps(r, ensure_ascii=False)}"
        for i, (c, r) in enumerate(zip(json.loads(calls), returned), start=1)
    )


def prompts(batch: pd.DataFrame, *, template: str) -> list[list[dict]]:
    """Rows -> requests: one final answer per pair, from its query, calls and results."""
    return [
        [{"role": "user", "content": render(template, query=q, steps=steps(c, r))}]
        for q, c, r in zip(batch["query"], batch["calls"], batch["results"])
    ]


def checked(frame: DataFrame) -> DataFrame:
    """`frame` (with answer, error, query and results) with `invented` (JSON list of the values the answer made
    up), `keep` and `drop_reason`: `trajectory_error` for a failed request, `invented:<first value>`, `echo` (the
    request repeated), `tool_text:<name>` (a call written out, not answered)."""
    base = frame.drop("invented", "keep", "drop_reason")
    schema = T.StructType(
        base.schema.fields + [T.StructField("invented", S), T.StructField("keep", B), T.StructField("drop_reason", S)]
    )
    return base.mapInPandas(_check_batches, schema)


def _check_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        invented, keep, why = [], [], []
        rows = zip(batch["answer"], batch["error"], batch["query"], batch["calls"], batch["results"])
        for answer, error, query, calls, results in rows:
            if error is not None or answer is None:
                invented.append(None), keep.append(False), why.append("trajectory_error")
                continue
            found = answer_check.invented(answer, query, answer_check.returned(results))
            invented.append(json.dumps(found, ensure_ascii=False))
            reason = answer_check.not_an_answer(answer, query, [c["name"] for c in json.loads(calls or "[]")])
            reason = f"invented:{found[0]}" if found else reason
            keep.append(reason is None)
            why.append(reason)
        yield batch.assign(invented=invented, keep=keep, drop_reason=why)


def to_rows(replies: DataFrame) -> DataFrame:
    """Replies -> rows: the answer, checked for invented values."""
    reply = llm_stage.parsed(replies, FinalAnswer)
    return checked(
        replies.select(*[c for c in replies.columns if c != "output"], reply.getField("answer").alias("answer"))
    )


def step(cfg) -> LLMStep:
    s = cfg.tools.trajectories
    return LLMStep(
        name="trajectories",
        table=TABLE,
        key="call_id",
        columns=("call_id", "source_id", "query", "calls", "results"),
        output=FinalAnswer,
        settings=s,
        template=s.template,
        prompts=functools.partial(prompts, template=s.template),
        rows=to_rows,
    )


def answerable(ctx: RunContext) -> DataFrame:
    """The pairs with calls that passed the format check and ran well on the current implementations."""
    sha = [r.module_sha for r in ctx.read("tools").where("module_sha IS NOT NULL").select("module_sha").collect()]
    if not sha:
        raise StageSkipped("not run: a final answer needs the calls' results, and there are no implementations")
    passed = ctx.read("call_format_verdicts", kept=False).where("keep").select("call_id")
    ran = (
        ctx.read("call_execution_verdicts", kept=False)
        .where(F.col("keep") & F.col("module_sha").isin(sha[:1]))
        .select("call_id", "results")
    )
    rows = ctx.read("tool_calls", kept=False).join(passed, "call_id", "left_semi").join(ran, "call_id")
    return rows.where(F.col("calls") != "[]").select("call_id", "source_id", "query", "calls", "results")


def recheck(ctx: RunContext) -> int:
    """The check applied again to every stored answer (a changed check, or an answer written in by hand); the rows
    whose verdict changed are written, and counted."""
    spark, rt = ctx.spark, ctx.rt
    stored = tables.read(spark, rt, TABLE).where("error IS NULL")
    fresh = checked(stored.select(*TABLE.row_names))
    old = stored.select("call_id", F.col("keep").alias("_keep"), F.col("drop_reason").alias("_why"))
    changed = fresh.join(old, "call_id").where(
        ~(F.col("keep").eqNullSafe(F.col("_keep")) & F.col("drop_reason").eqNullSafe(F.col("_why")))
    )
    staged = tables.materialize(spark, rt, "tool_trajectories_recheck", changed.select(*TABLE.row_names))
    n = staged.count()
    if n:
        tables.upsert(spark, rt, TABLE, staged, run_id=ctx.cfg.run_id)
    return n


def success(counts: dict) -> dict:
    """The trajectory success rate: answers kept of those stored."""
    total = counts["kept"] + sum(counts["dropped"].values())
    return {"trajectories": total, "success_rate": round(counts["kept"] / total, 3) if total else None}


def run(ctx: RunContext) -> StageResult:
    result = llm_stage.run(ctx, step(ctx.cfg), answerable(ctx))
    result.metrics["rechecked"] = recheck(ctx)
    counts = tables.verdict_counts(tables.read(ctx.spark, ctx.rt, TABLE))
    result.metrics.update({**counts, **success(counts)})
    return result


def figure(entry: dict):
    """Kept trajectories beside each drop reason (an invented value counted as one reason), with the success rate."""
    import matplotlib.pyplot as plt

    reasons: dict[str, int] = {}
    for reason, n in entry.get("dropped", {}).items():
        name = "invented value" if reason.startswith("invented:") else reason
        reasons[name] = reasons.get(name, 0) + n
    labels, values = ["kept", *reasons], [entry.get("kept", 0), *reasons.values()]
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(labels) + 1), 3))
    ax.bar(labels, values, color=["tab:green"] + ["tab:red"] * len(reasons))
    ax.set_ylabel("trajectories")
    rate = entry.get("success_rate")
    ax.set_title(f"final answers: {rate:.0%} kept" if rate is not None else "final answers")
    fig.tight_layout()
    return fig


STAGE = Stage(
    name="trajectories",
    help="finish each checked pair with its tool results and the teacher's final answer, checked for invented "
    "values, into tool_trajectories",
    run=run,
    reads=("tools", "tool_calls", "call_format_verdicts", "call_execution_verdicts"),
    writes=(TABLE,),
    config=TrajectoriesConfig,
    section="tools.trajectories",
    figures=lambda ctx, entry: {"trajectories/success.png": figure(entry)} if entry.get("trajectories") else {},
)
