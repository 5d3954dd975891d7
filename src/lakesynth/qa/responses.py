"""Responses stage: `synthetic_questions` -> `synthetic_responses`, answers by batch `ai_query`.

One SQL statement per chunk, as every LLM stage's (llm_stage.py): Databricks runs its built-in `ai_query`
(batch inference); locally lakesynth registers its own under that name (llm.ai_query_udf).
The request carries the domain rules and the reasoning instructions; the response format keeps
the reasoning apart from the answer, and only the answer becomes training data. A question is answered as in or out
of scope by its own label when the critic gave one (`in_scope` here is that label), else by its seed's.
"""

from __future__ import annotations

import functools
from typing import ClassVar

from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.qa.answers import Answer, prompts, to_response_rows


class ResponsesConfig(LLMStageConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "responses.j2"
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")


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
    )


def run(ctx: RunContext) -> StageResult:
    questions = ctx.read("synthetic_questions")
    if ctx.cfg.quality.critic.enabled:  # the question's own scope, as the critic labelled it, over its seed's
        labels = ctx.read("question_verdicts", kept=False).where(F.col("in_scope").isNotNull())
        labels = labels.select("question_id", F.col("in_scope").alias("_label"))
        questions = questions.join(labels, "question_id", "left")
        questions = questions.withColumn("in_scope", F.coalesce("_label", "in_scope")).drop("_label")
    answerable = questions.where(F.col("error").isNull() & F.col("question").isNotNull())
    if ctx.cfg.seed.pairs:  # the user's own pairs: the answer came in with the question (seed metadata)
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
    reads=("synthetic_questions", "question_verdicts"),
    writes=(TABLE,),
    config=ResponsesConfig,
)
