"""Relevance stage: `synthetic_responses` -> `relevance_verdicts`, answer relevance by reverse query.

SynthCall's check (RAGAS calls it answer relevancy): the teacher writes the questions an answer would answer,
and the pair's score is the mean cosine of their embeddings with the original question's. An answer that
drifted from its question scores low and is dropped (`relevance`). Off by default for plain Q&A. A reply that
fails to parse is the row's error (`relevance_error`), asked again on the next run.
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

TEMPLATE = """Here is an answer a customer-service chatbot gave to a customer's question.

Answer:
{{ answer }}

Write {{ count }} different questions a customer could have asked that this answer answers, each one short
sentence in the answer's language. Answer with a JSON object with the key "questions" (a list of strings)."""


class RelevanceConfig(LLMStageConfig):
    enabled: bool = Field(False, description="Drop pairs whose answer does not answer their question.")
    questions: int = Field(3, ge=1, le=10, description="Reverse questions generated per answer.")
    threshold: float = Field(0.5, ge=-1, le=1, description="The lowest mean cosine a kept pair may have.")
    embeddings_endpoint: str = Field(
        "embeddings", description="The endpoint (a name under endpoints:) that embeds the questions."
    )
    template: str = Field(TEMPLATE, description="The reverse-query Jinja prompt (answer, count).")
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(256, ge=16, description="Completion token limit.")


class ReverseQuestions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: list[str] = Field(min_length=1, description="Questions this answer answers")


TABLE = tables.verdict(
    "relevance_verdicts",
    [("question_id", S), ("seed_id", S), ("topic", S), ("questions", S), ("score", T.DoubleType())]
    + tables.LLM_ACCOUNTING,
    judges="synthetic_responses",
    key="question_id",
)


def prompts(batch: pd.DataFrame, *, template: str, count: int) -> list[list[dict]]:
    """Rows -> requests: the answer alone, so the reverse questions cannot copy the original."""
    return [[{"role": "user", "content": render(template, answer=a, count=count)}] for a in batch["answer"]]


def to_verdict_rows(replies: DataFrame, *, embed: Callable[[DataFrame], DataFrame], threshold: float) -> DataFrame:
    """Replies -> rows: the reverse questions, their mean cosine with the question, `keep` at `threshold`."""
    reverse = replies.withColumn("_reverse", llm_stage.parsed(replies, ReverseQuestions).getField("questions"))
    answered = reverse.where(F.col("error").isNull() & (F.size("_reverse") > 0))
    texts = answered.select("question_id", F.posexplode(F.concat(F.array("question"), "_reverse")).alias("i", "text"))
    scores = llm_stage.mean_cosines(embed(texts), "question_id")
    scored = reverse.join(scores, "question_id", "left")
    # A text that could not be embedded is the row's error: asked again on the next run, like a failed reply.
    scored = scored.withColumn("error", F.coalesce("error", "embed_error"))
    ok = F.col("error").isNull() & F.col("score").isNotNull()
    return scored.select(
        *[c for c in replies.columns if c not in ("output", "question", "answer", "in_scope")],
        F.when(ok, F.col("output")).alias("questions"),
        "score",
        (ok & (F.col("score") >= threshold)).alias("keep"),
        F.when(~ok, F.lit("relevance_error")).when(F.col("score") < threshold, F.lit("relevance")).alias("drop_reason"),
    )


def step(ctx: RunContext) -> LLMStep:
    cfg = ctx.cfg
    r = cfg.quality.relevance
    embeddings = cfg.endpoint(r.embeddings_endpoint)
    return LLMStep(
        name="relevance",
        table=TABLE,
        key="question_id",
        columns=("question_id", "seed_id", "topic", "in_scope", "question", "answer"),
        output=ReverseQuestions,
        settings=r,
        template=f"{r.template}|{r.questions}|{embeddings.model}",  # another count or model, another version
        fingerprint_extra={"embeddings_model": embeddings.model},  # another model: scored again
        prompts=functools.partial(prompts, template=r.template, count=r.questions),
        rows=functools.partial(
            to_verdict_rows,
            embed=functools.partial(
                llm_stage.embed, ctx, per_row=True, teacher=embeddings, batch=embeddings.batch_size, name="relevance"
            ),
            threshold=r.threshold,
        ),
    )


def run(ctx: RunContext) -> StageResult:
    relevance = ctx.cfg.quality.relevance
    answered = ctx.read("synthetic_responses", kept=False).where(F.col("error").isNull() & F.col("answer").isNotNull())
    result = llm_stage.run(ctx, step(ctx), answered)
    # The scores are kept; a new threshold applies to every row at once, with no call paid again.
    tables.rekeep(
        ctx.spark,
        ctx.rt,
        TABLE,
        relevance.threshold,
        scores={"score": "relevance"},
        required="score",
        failed="relevance_error",
    )
    result.metrics.update(tables.verdict_counts(tables.read(ctx.spark, ctx.rt, TABLE)))
    return result


STAGE = Stage(
    name="relevance",
    help="score each answer by reverse query (questions written from the answer, mean cosine with the question) "
    "into relevance_verdicts",
    run=run,
    reads=("synthetic_responses",),
    writes=(TABLE,),
    config=RelevanceConfig,
    section="quality.relevance",
)
