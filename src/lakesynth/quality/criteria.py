"""The pair judge's parts, shared by the stages that judge answers: the criteria (name, description, min_score) on
InstructLab's 1-3 scale, the reply with a reasoning before each score, and the comparison of several answers to
one question in one call (the preference stage's candidates, the evaluate stage's two students)."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import llm_stage
from lakesynth.core.templates import render

SCALE = (1, 3)  # the judge's scores, lowest and highest


class Criterion(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Short name; the score's key and drop reason.")
    description: str = Field(description="What the judge checks, with what 1, 2 and 3 mean.")
    min_score: int = Field(2, ge=1, le=3, description="The lowest score a kept pair may have on it.")


CRITERIA = (
    Criterion(
        name="quality",
        description="Is the answer correct, relevant and helpful? 1: wrong, irrelevant or unsafe; 2: correct but "
        "brief or missing something useful; 3: correct, complete and clear.",
    ),
    Criterion(
        name="scope",
        description="Does the answer follow the rules on scope? An in-scope question must be answered; an "
        "out-of-scope one must be politely redirected with no advice given. 1: breaks the rules (answers an "
        "out-of-scope question or refuses an in-scope one); 2: follows them, clumsily; 3: follows them well.",
    ),
)


class Score(BaseModel):
    """One criterion's verdict: the justification first, so the score follows from it."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str
    score: Literal[3, 2, 1]


class ScopeLabel(BaseModel):
    """The judge's own label of a question's scope, when no critic gave one: its reasoning first."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str
    in_scope: bool


def output_model(criteria: tuple[Criterion, ...], label_scope: bool = False) -> type[BaseModel]:
    """The reply: one Score per criterion, in order; with `label_scope`, first the question's own scope
    (`question_scope`), which the answer is then judged against."""
    fields = {c.name: (Score, Field(description=c.description)) for c in criteria}
    if label_scope:
        about = "Whether, under the rules, the chatbot must answer this question (in_scope) or redirect it"
        fields = {"question_scope": (ScopeLabel, Field(description=about)), **fields}
    return create_model("Judgement", __config__=ConfigDict(extra="forbid"), **fields)


def verdict_rows(
    replies: DataFrame, *, criteria: tuple[Criterion, ...], dropped: tuple[str, ...], label_scope: bool = False
) -> DataFrame:
    """Replies -> verdict rows (the request columns but `dropped`): the scores as JSON (`{criterion: {reasoning,
    score}}`, with the judge's `question_scope` when it labelled the scope: `in_scope` is then that label), `keep`
    when every criterion reaches its min_score, else `judge:<the first that did not>`."""
    reply = llm_stage.parsed(replies, output_model(criteria, label_scope))
    label = reply.getField("question_scope").getField("in_scope").alias("in_scope")
    scores = [reply.getField(c.name).getField("score").cast("int") for c in criteria]
    failed = F.coalesce(
        *[F.when(s < c.min_score, F.lit(f"judge:{c.name}")) for s, c in zip(scores, criteria)], F.lit(None)
    )
    ok = F.col("error").isNull()
    return replies.select(
        *[label if c == "in_scope" and label_scope else c for c in replies.columns if c not in ("output", *dropped)],
        F.when(ok, F.col("output")).alias("scores"),
        F.least(*scores).alias("min_score") if len(scores) > 1 else scores[0].alias("min_score"),
        (ok & failed.isNull()).alias("keep"),
        F.when(~ok, F.lit("judge_error")).otherwise(failed).alias("drop_reason"),
    )


COMPARE_TEMPLATE = """You compare answers written to train a customer-service chatbot.

Domain rules of the chatbot:
{{ rules }}

Question ({{ "IN scope: the chatbot must answer it" if in_scope else "OUT of scope: the chatbot must redirect it" }}):
{{ question }}
{% for answer in answers %}
Answer {{ loop.index }}:
{{ answer }}
{% endfor %}
Score every answer on each criterion from 1 to 3. For each, first write "reasoning" (one sentence), then the "score".
{% for c in criteria %}- {{ c.name }}: {{ c.description }}
{% endfor %}
Answer with a JSON object with the keys "answer_1" to "answer_{{ answers | length }}", each an object
with one key per criterion ({{ criteria | map(attribute="name") | join(", ") }}), each an object
with the keys "reasoning" (string) and "score" (1, 2 or 3)."""


def comparison_model(n: int, criteria):
    """The comparing judge's reply: a judge.output_model verdict per answer, `answer_1` ... `answer_<n>`."""
    verdict = output_model(criteria)
    fields = {f"answer_{i}": (verdict, ...) for i in range(1, n + 1)}
    return create_model("Comparison", __config__=ConfigDict(extra="forbid"), **fields)


def compare_prompts(batch: pd.DataFrame, *, template: str, rules: str, criteria, n: int) -> list[list[dict]]:
    """Rows -> requests: one comparison of all a question's candidate answers."""
    return [
        [
            {
                "role": "user",
                "content": render(
                    template,
                    rules=rules,
                    question=row["question"],
                    in_scope=bool(row["in_scope"]),
                    answers=[row[f"answer_{i}"] for i in range(1, n + 1)],
                    criteria=criteria,
                ),
            }
        ]
        for row in batch.to_dict("records")
    ]


def rating(reply: F.Column, answer: int, criteria) -> F.Column:
    """An answer's rating in a parsed comparison: the mean of its criteria's scores."""
    verdict = reply.getField(f"answer_{answer}")
    return sum(verdict.getField(c.name).getField("score").cast("double") for c in criteria) / len(criteria)
