"""How the teacher is asked to answer a question and how its reply becomes a row: the responses stage's request,
also used for the preference stage's candidates, so every answer in the dataset is asked for the same way."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.core import llm_stage
from lakesynth.core.templates import render


class Answer(BaseModel):
    """The teacher's reply: its reasoning, kept apart from the answer that becomes training data."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="Step-by-step reasoning about the question and the rules")
    answer: str = Field(description="The answer to the customer")


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
