"""Call relevance: SynthCall's reverse-query check on function-calling pairs -> `call_relevance_verdicts`.

The teacher sees only a pair's calls and what they returned, writes the reply the assistant would give from them
(`response`), then `quality.relevance.questions` requests a user could have made that these calls answer. The
pair's score is the mean cosine of their embeddings with the original query (`quality.relevance.embeddings_endpoint`); below
`quality.relevance.threshold` it is dropped (`relevance`). Calls that answer something other than what was asked
score low. Judged: pairs with at least one call that passed the format check, and the execution and semantic checks
where those ran (a query no tool fits has no calls to ask from). A reply that does not parse is the row's error
(`relevance_error`), asked again on the next run; a new threshold applies to every row with no call paid again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import S
from lakesynth.core.templates import render

TEMPLATE = """An assistant answered a user's request by calling functions.
Here is what it called{{ " and what came back" if results }}.

Calls:
{{ calls }}
{% if results %}
Results:
{{ results }}
{% endif %}
First write "response": the assistant's reply to the user from these {{ "results" if results else "calls" }} alone,
one to three sentences. Then write "queries": {{ count }} different requests, each one short sentence, that a user
could have made for exactly these calls. Answer with a JSON object with the keys "response" and "queries"."""


class CallRelevanceConfig(LLMStageConfig):
    enabled: bool = Field(
        False, description="Drop pairs whose calls answer another request (reverse query; quality.relevance.*)."
    )
    template: str = Field(TEMPLATE, description="The reverse-query Jinja prompt (calls, results, count).")
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(384, ge=16, description="Completion token limit.")


class ReverseQueries(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response: str = Field(description="The assistant's reply from the results")
    queries: list[str] = Field(min_length=1, description="Requests these calls answer")


TABLE = tables.verdict(
    "call_relevance_verdicts",
    [("call_id", S), ("source_id", S), ("response", S), ("queries", S), ("score", T.DoubleType())]
    + tables.LLM_ACCOUNTING,
    judges="tool_calls",
    key="call_id",
)


def prompts(batch: pd.DataFrame, *, template: str, count: int) -> list[list[dict]]:
    """Rows -> requests: the calls and results alone, so the queries cannot copy the original."""
    return [
        [{"role": "user", "content": render(template, calls=c, results=r, count=count)}]
        for c, r in zip(batch["calls"], batch["results"])
    ]


def to_verdict_rows(replies: DataFrame, *, embed: Callable[[DataFrame], DataFrame], threshold: float) -> DataFrame:
    """Replies -> rows: the response and queries, their mean cosine with the query, `keep` at `threshold`."""
    reply = llm_stage.parsed(replies, ReverseQueries)
    with_queries = replies.withColumn("_queries", reply.getField("queries")).withColumn(
        "_response", reply.getField("response")
    )
    answered = with_queries.where(F.col("error").isNull() & (F.size("_queries") > 0))
    texts = answered.select("call_id", F.posexplode(F.concat(F.array("query"), "_queries")).alias("i", "text"))
    scored = with_queries.join(llm_stage.mean_cosines(embed(texts), "call_id"), "call_id", "left")
    # A text that could not be embedded is the row's error: asked again on the next run, like a failed reply.
    scored = scored.withColumn("error", F.coalesce("error", "embed_error"))
    ok = F.col("error").isNull() & F.col("score").isNotNull()
    return scored.select(
        *[c for c in replies.columns if c not in ("output", "query", "calls", "results")],
        F.col("_response").alias("response"),
        F.to_json("_queries").alias("queries"),
        "score",
        (ok & (F.col("score") >= threshold)).alias("keep"),
        F.when(~ok, F.lit("relevance_error")).when(F.col("score") < threshold, F.lit("relevance")).alias("drop_reason"),
    )


def step(ctx: RunContext) -> LLMStep:
    cfg = ctx.cfg
    own, shared = cfg.tools.relevance, cfg.quality.relevance
    embeddings = cfg.endpoint(shared.embeddings_endpoint)
    return LLMStep(
        name="call_relevance",
        table=TABLE,
        key="call_id",
        columns=("call_id", "source_id", "query", "calls", "results"),
        output=ReverseQueries,
        settings=own,
        template=f"{own.template}|{shared.questions}|{embeddings.model}",  # another count or model: again
        fingerprint_extra={"embeddings_model": embeddings.model},  # another model: scored again
        prompts=functools.partial(prompts, template=own.template, count=shared.questions),
        rows=functools.partial(
            to_verdict_rows,
            embed=functools.partial(
                llm_stage.embed,
                ctx,
                per_row=True,
                teacher=embeddings,
                batch=embeddings.batch_size,
                name="call_relevance",
            ),
            threshold=shared.threshold,
        ),
    )


def judged_rows(ctx: RunContext) -> DataFrame:
    """The pairs with calls that passed format, and execution and semantic where they ran."""
    passed = ctx.read("call_format_verdicts", kept=False).where("keep").select("call_id")
    failed = [
        ctx.read(t, kept=False).where("NOT keep OR keep IS NULL").select("call_id")
        for t in ("call_execution_verdicts", "call_semantic_verdicts")
    ]
    results = ctx.read("call_execution_verdicts", kept=False).select("call_id", "results")
    rows = ctx.read("tool_calls", kept=False).join(passed, "call_id", "left_semi")
    for dropped in failed:
        rows = rows.join(dropped, "call_id", "left_anti")
    rows = rows.where(F.col("calls") != "[]").join(results, "call_id", "left")
    return rows.select("call_id", "source_id", "query", "calls", "results")


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    threshold = cfg.quality.relevance.threshold
    result = llm_stage.run(ctx, step(ctx), judged_rows(ctx))
    tables.rekeep(
        ctx.spark, ctx.rt, TABLE, threshold, scores={"score": "relevance"}, required="score", failed="relevance_error"
    )
    result.metrics.update(tables.verdict_counts(tables.read(ctx.spark, ctx.rt, TABLE)))
    return result


STAGE = Stage(
    name="call_relevance",
    help="score each pair's calls by reverse query (requests written from the calls and results, mean cosine with "
    "the query) into call_relevance_verdicts",
    run=run,
    reads=("tool_calls", "call_format_verdicts", "call_execution_verdicts", "call_semantic_verdicts"),
    writes=(TABLE,),
    config=CallRelevanceConfig,
    section="tools.relevance",
)
