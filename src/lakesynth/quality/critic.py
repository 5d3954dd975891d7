"""Critic stage: `synthetic_questions` -> `question_verdicts`, a 0/1 verdict on each generated question.

InstructLab's question critic, before any answer is paid for: a question the critic drops costs no answer.
It also labels the question's own scope (`in_scope`): a generated question can drift from its seed's scope (a seed
about suing the company gives "How can I get my internet back up?"), and the answer is written and judged for the
question's label, not the seed's.
Its verdict is data: score, reasoning, model and prompt version, `keep` and `drop_reason` on every question,
and downstream stages read only the questions it keeps (`RunContext.read` applies every verdict table).
A reply that fails to parse is the row's error, kept out for now (`drop_reason` `critic_error`) and asked
again on the next run.
"""

from __future__ import annotations

import functools
import json
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, S
from lakesynth.core.templates import render

CRITERIA = (
    "It can be answered in text, by a customer-service chatbot.",
    "It is one or two well-formed sentences.",
    "It is self-contained: it makes sense without the seed or any other context.",
    "It is in the language of the use case.",
    "It is on topic for the use case, in or out of scope (an out-of-scope question is fine: the chatbot will "
    "redirect it).",
    "It is not harmful.",
)
TEMPLATE = """You review questions written to train a customer-service chatbot.

Domain rules of the chatbot:
{{ rules }}

Question (topic "{{ topic }}"):
{{ question }}

Criteria; the question passes only if it meets every one:
{% for criterion in criteria %}- {{ criterion }}
{% endfor %}
First, in "reasoning", check the question against each criterion in one short sentence each.
Then say in "in_scope" whether, under the rules, the chatbot must answer this question (true) or redirect it
(false), judged on what the question itself asks.
Only then give "score": 1 if it meets every criterion, 0 if it fails any.
Answer with a JSON object with the keys "reasoning" (string), "in_scope" (true or false) and "score" (1 or 0)."""


class CriticConfig(LLMStageConfig):
    enabled: bool = Field(False, description="Review each generated question before it is answered.")
    criteria: tuple[str, ...] = Field(CRITERIA, description="What a question must meet to be kept.")
    extra_criteria: tuple[str, ...] = Field((), description="Your own criteria, added to `criteria`.")
    template: str = Field(TEMPLATE, description="The critic's Jinja prompt (rules, topic, question, criteria).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(384, ge=16, description="Completion token limit.")


class CriticVerdict(BaseModel):
    """The critic's reply: its reasoning first, so the score follows from it."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="One short sentence per criterion")
    in_scope: bool = Field(description="Under the rules, the chatbot must answer this question (else redirect it)")
    score: Literal[1, 0] = Field(description="1: meets every criterion; 0: fails one")


TABLE = tables.verdict(
    "question_verdicts",
    [("question_id", S), ("seed_id", S), ("topic", S), ("question", S), ("score", INT), ("reasoning", S)]
    + [("in_scope", B)]
    + tables.LLM_ACCOUNTING,
    judges="synthetic_questions",
    key="question_id",
)


def prompts(batch: pd.DataFrame, *, template: str, rules: str, criteria: tuple[str, ...]) -> list[list[dict]]:
    """Rows -> requests: one review per question."""
    return [
        [{"role": "user", "content": render(template, rules=rules, topic=t, question=q, criteria=criteria)}]
        for t, q in zip(batch["topic"], batch["question"])
    ]


def to_verdict_rows(replies: DataFrame) -> DataFrame:
    """Replies -> rows: the score, reasoning and the question's own scope, `keep` when it passed, else why not."""
    reply = llm_stage.parsed(replies, CriticVerdict)
    score = reply.getField("score").cast("int")
    return replies.select(
        *[c for c in replies.columns if c != "output"],
        score.alias("score"),
        reply.getField("reasoning").alias("reasoning"),
        reply.getField("in_scope").alias("in_scope"),
        (F.col("error").isNull() & (score == 1)).alias("keep"),
        F.when(F.col("error").isNotNull(), F.lit("critic_error"))
        .when(score != 1, F.lit("critic"))
        .alias("drop_reason"),
    )


def step(cfg) -> LLMStep:
    c = cfg.quality.critic
    criteria = (*c.criteria, *c.extra_criteria)
    return LLMStep(
        name="critic",
        table=TABLE,
        key="question_id",
        columns=("question_id", "seed_id", "topic", "question"),
        output=CriticVerdict,
        settings=c,
        template=c.template + json.dumps(criteria),  # new criteria, a new prompt version (as the judge's)
        prompts=functools.partial(prompts, template=c.template, rules=cfg.use_case.rules, criteria=criteria),
        rows=to_verdict_rows,
    )


def run(ctx: RunContext) -> StageResult:
    # Unfiltered by its own verdicts: a question whose review failed is asked again.
    questions = ctx.read("synthetic_questions", kept=False).where(
        F.col("error").isNull() & F.col("question").isNotNull()
    )
    return llm_stage.run(ctx, step(ctx.cfg), questions)


STAGE = Stage(
    name="critic",
    help="review each generated question (0/1 with reasoning) before it is answered, into question_verdicts",
    run=run,
    reads=("synthetic_questions",),
    writes=(TABLE,),
    config=CriticConfig,
    section="quality.critic",
)
