"""Responses stage: `synthetic_questions` -> `synthetic_responses`, answers by batch `ai_query`.

One SQL statement, the same text on both engines: Databricks runs its built-in `ai_query`
(batch inference); locally lakesynth registers its own under that name (llm.ai_query_udf).
The request carries the domain rules and the reasoning instructions; the response format keeps
the reasoning apart from the answer, and only the answer becomes training data.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth import llm_stage, tables
from lakesynth.config import LLMStageConfig
from lakesynth.llm_stage import LLMStep
from lakesynth.stage import RunContext, Stage, StageResult
from lakesynth.tables import B, S
from lakesynth.templates import render


class ResponsesConfig(LLMStageConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "responses.j2"
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")


class Answer(BaseModel):
    """The teacher's reply: its reasoning, kept apart from the answer that becomes training data."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="Step-by-step reasoning about the question and the rules")
    answer: str = Field(description="The answer to the customer")


TABLE = tables.contract(
    "synthetic_responses",
    [
        ("question_id", S),
        ("seed_id", S),
        ("topic", S),
        ("in_scope", B),
        ("question", S),
        ("answer", S),
        ("reasoning", S),
    ]
    + tables.LLM_ACCOUNTING,
    key="question_id",
    parent="question_id",
    parent_table="synthetic_questions",
)


def prompts(batch: pd.DataFrame, *, template: str, rules: str) -> list[list[dict]]:
    """Rows -> requests: one `ai_query` request string per question (rules + instructions + question)."""
    return [
        [{"role": "user", "content": render(template, rules=rules, question=q, topic=t, in_scope=bool(s))}]
        for q, t, s in zip(batch["question"], batch["topic"], batch["in_scope"])
    ]


def to_response_rows(replies: DataFrame) -> DataFrame:
    """Replies -> rows: one `synthetic_responses` row per answered request; an empty answer is an error."""
    reply = llm_stage.parsed(replies, Answer)
    answer = reply.getField("answer")
    error = F.coalesce(
        F.col("error"),
        F.when(answer.isNull() | (F.trim(answer) == ""), F.lit("EmptyAnswer: the reply had no answer")),
    )
    return replies.select(
        *[c for c in replies.columns if c not in ("output", "error", "raw_output")],
        F.when(error.isNull(), answer).alias("answer"),
        reply.getField("reasoning").alias("reasoning"),
        error.alias("error"),
        F.coalesce(F.col("raw_output"), F.when(error.isNotNull(), F.col("output"))).alias("raw_output"),
    )


def step(cfg) -> LLMStep:
    r = cfg.responses
    return LLMStep(
        name="responses",
        table=TABLE,
        key="question_id",
        columns=("question_id", "seed_id", "topic", "in_scope", "question"),
        output=Answer,
        settings=r,
        template=r.template,
        prompts=functools.partial(prompts, template=r.template, rules=cfg.use_case.rules),
        rows=to_response_rows,
        via_ai_query=True,
    )


def run(ctx: RunContext) -> StageResult:
    questions = ctx.read("synthetic_questions")
    answerable = questions.where(F.col("error").isNull() & F.col("question").isNotNull())
    if ctx.cfg.seeds.pairs:  # the user's own pairs: the answer came in with the question (seed metadata)
        answers = ctx.read("seed_questions").select(
            "seed_id", F.get_json_object("metadata", "$.answer").alias("answer")
        )
        pairs = answerable.select("question_id", "seed_id", "topic", "in_scope", "question").join(answers, "seed_id")
        return llm_stage.imported(ctx, TABLE, pairs)
    return llm_stage.run(ctx, step(ctx.cfg), answerable)


STAGE = Stage(
    name="responses",
    help="answer the questions with ai_query into synthetic_responses",
    run=run,
    reads=("synthetic_questions",),
    writes=(TABLE,),
    config=ResponsesConfig,
)
