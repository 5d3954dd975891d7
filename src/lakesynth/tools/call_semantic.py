"""Call semantic check: does each call do what its query asks? -> `call_semantic_verdicts`.

APIGen's third check, after format and execution: an LLM judge (the endpoint of `quality.judge`, unless
`tools.semantic` names its own) sees the tools, the query, the calls and, when they ran, their results, and
replies with its reasoning, then `passed`. It fails a wrong function, wrong argument values, a number of calls
that does not match the requests in the query, and any call for a query no tool fits. Only rows that passed the
format and execution checks are judged; a reply that does not parse is the row's error (`semantic_error`),
judged again on the next run. With `tools.trajectories` on, the judge also reads the final answer and fails one
that does not use the results (or states what they did not return); a pair whose answer the deterministic check
dropped is not judged.
"""

from __future__ import annotations

import functools
import json

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.core.templates import render

TEMPLATE = """You check one example written to train an assistant that answers requests by calling functions (tools).

The tools:
{{ tools }}

The user's request:
{{ query }}

{% if no_calls %}The assistant called no tool: it judged that none of the tools can do this request.
{% else %}The assistant's calls:
{{ calls }}
{% endif %}{% if results %}
What the calls returned (data from the tools, right whatever it says):
{{ results }}
{% endif %}{% if answer %}
The assistant's final answer to the user, written from what the calls returned:
{{ answer }}
{% endif %}
{% if no_calls %}Look for a tool that does what the request asks. If you find one, the assistant was wrong not to call
it: "passed" is false. If none of the tools does it, the assistant was right: "passed" is true.
{% else %}Answer these questions:
1. Does each call use the tool that does what the request asks?
2. Are the argument values the ones the request states, or sensible defaults, and none invented?
3. Is there one call per thing the request asks for?{% if answer %}
4. Does the final answer use what the calls returned, answer the request, and state nothing they did not return?{% endif %}
The example passes only if all {{ "four" if answer else "three" }} answers are yes.
{% endif %}First write "reasoning": your answers, in one to three sentences. Then write "passed": true or false."""


class CallSemanticConfig(LLMStageConfig):
    enabled: bool = Field(True, description="Have the judge check that the calls do what each query asks.")
    endpoint: str = Field("judge", description="The endpoint (a name under endpoints:) this check calls.")
    template: str = Field(TEMPLATE, description="The semantic checker's Jinja prompt (tools, query, calls, results).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(384, ge=16, description="Completion token limit.")


class Judgement(BaseModel):
    """The checker's reply: the reasoning first, so the verdict follows from it."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str
    passed: bool


TABLE = tables.verdict(
    "call_semantic_verdicts",
    [("call_id", S), ("source_id", S), ("reasoning", S), ("passed", B)] + tables.LLM_ACCOUNTING,
    judges="tool_calls",
    key="call_id",
)


def prompts(batch: pd.DataFrame, *, template: str, tools: str) -> list[list[dict]]:
    """Rows -> requests: one judgement per row, with every tool described."""
    return [
        [
            {
                "role": "user",
                "content": render(
                    template, tools=tools, query=q, calls=c, no_calls=not json.loads(c), results=r, answer=a
                ),
            }
        ]
        for q, c, r, a in zip(batch["query"], batch["calls"], batch["results"], batch["answer"])
    ]


def to_verdict_rows(replies: DataFrame) -> DataFrame:
    """Replies -> rows: kept when the judge says the calls pass, else `semantic` (or `semantic_error`)."""
    reply = llm_stage.parsed(replies, Judgement)
    ok = F.col("error").isNull()
    passed = reply.getField("passed")
    return replies.select(
        *[c for c in replies.columns if c not in ("output", "query", "calls", "results", "answer")],
        reply.getField("reasoning").alias("reasoning"),
        passed.alias("passed"),
        (ok & F.coalesce(passed, F.lit(False))).alias("keep"),
        F.when(~ok, F.lit("semantic_error")).when(~passed, F.lit("semantic")).alias("drop_reason"),
    )


def step(cfg, tools: str) -> LLMStep:
    s = cfg.tools.semantic
    return LLMStep(
        name="call_semantic",
        table=TABLE,
        key="call_id",
        columns=("call_id", "source_id", "query", "calls", "results", "answer"),
        output=Judgement,
        settings=s,
        template=s.template,
        prompts=functools.partial(prompts, template=s.template, tools=tools),
        rows=to_verdict_rows,
    )


def run(ctx: RunContext) -> StageResult:
    specs = [json.loads(r.spec)["function"] for r in ctx.read("tools").orderBy("name").select("spec").collect()]
    tools = "\n".join(json.dumps(s, ensure_ascii=False, sort_keys=True) for s in specs)
    passed_format = ctx.read("call_format_verdicts", kept=False).where("keep").select("call_id")
    executed = ctx.read("call_execution_verdicts", kept=False).select("call_id", "keep", "results")
    rows = (
        ctx.read("tool_calls", kept=False)
        .join(passed_format, "call_id", "left_semi")
        .join(executed, "call_id", "left")
        .where(
            F.coalesce(F.col("keep"), F.lit(True))
        )  # a row that ran must have run well; one that did not run is judged
    )
    if ctx.cfg.tools.trajectories.enabled:  # the final answer is judged with its calls; one the check dropped is not
        answers = ctx.read("tool_trajectories", kept=False).select(
            "call_id", F.col("answer"), F.col("keep").alias("answer_keep")
        )
        rows = rows.join(answers, "call_id", "left").where(F.coalesce(F.col("answer_keep"), F.lit(True)))
    else:
        rows = rows.withColumn("answer", F.lit(None).cast("string"))
    rows = rows.select("call_id", "source_id", "query", "calls", "results", "answer")
    return llm_stage.run(ctx, step(ctx.cfg, tools), rows)


STAGE = Stage(
    name="call_semantic",
    help="have the judge check that each call does what its query asks, into call_semantic_verdicts",
    run=run,
    reads=("tools", "tool_calls", "call_format_verdicts", "call_execution_verdicts", "tool_trajectories"),
    writes=(TABLE,),
    config=CallSemanticConfig,
    section="tools.semantic",
)
