"""Judge stage: `synthetic_responses` -> `answer_verdicts`, each answered pair scored per criterion.

One structured call per pair gives every criterion a justification written before its score (NeMo Data
Designer's `{criterion: {reasoning, score}}`), on InstructLab's 1–3 scale by default. A pair is kept when every
criterion reaches its `min_score`; otherwise `drop_reason` names the first that did not (`judge:<criterion>`).
The default criteria include scope compliance against the use case's rules, judged against the question's own scope:
the critic's label (carried by the answer), or, with the critic off, the judge's own (`question_scope` in the reply,
then `in_scope` here), never the seed's alone. Downstream stages read only kept
pairs (`RunContext.read`); a reply that fails to parse is the row's error (`judge_error`), asked again next run.
"""

from __future__ import annotations

import functools
import json

import pandas as pd
from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, S
from lakesynth.core.templates import render
from lakesynth.quality.criteria import CRITERIA, Criterion, output_model, verdict_rows

TEMPLATE = """You judge answers written to train a customer-service chatbot.

Domain rules of the chatbot:
{{ rules }}

{% if in_scope is none %}Question:
{{ question }}
{% else %}Question ({{ "IN scope: the chatbot must answer it" if in_scope else "OUT of scope: the chatbot must redirect it" }}):
{{ question }}
{% endif %}
Answer:
{{ answer }}
{% if in_scope is none %}
First decide, under the rules, whether this question itself is in scope (the chatbot must answer it) or out of
scope (it must redirect it), from what it asks: in "question_scope", write "reasoning" (one sentence), then
"in_scope" (true or false). Judge the answer against that decision.
{% endif %}
Score the answer on each criterion from 1 to 3. For each, first write "reasoning" (one or two sentences),
then the "score".
{% for c in criteria %}- {{ c.name }}: {{ c.description }}
{% endfor %}
Answer with a JSON object with {% if in_scope is none %}the key "question_scope" (an object with the keys "reasoning"
and "in_scope"), then {% endif %}one key per criterion ({{ criteria | map(attribute="name") | join(", ") }}),
each an object with the keys "reasoning" (string) and "score" (1, 2 or 3)."""


class JudgeConfig(LLMStageConfig):
    enabled: bool = Field(False, description="Score each answered pair and keep only those that pass.")
    endpoint: str = Field("judge", description="The endpoint (a name under endpoints:) this check calls.")
    criteria: tuple[Criterion, ...] = Field(CRITERIA, description="The criteria, each with its min_score.")
    template: str = Field(TEMPLATE, description="The judge's Jinja prompt (rules, question, answer, criteria).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=16, description="Completion token limit.")


TABLE = tables.verdict(
    "answer_verdicts",
    [("question_id", S), ("seed_id", S), ("topic", S), ("in_scope", B), ("scores", S), ("min_score", INT)]
    + tables.LLM_ACCOUNTING,
    judges="synthetic_responses",
    key="question_id",
)


def prompts(
    batch: pd.DataFrame, *, template: str, rules: str, criteria: tuple[Criterion, ...], label_scope: bool = False
) -> list[list[dict]]:
    """Rows -> requests: one judgement per answered pair; with `label_scope`, no scope is given: the judge labels
    the question's scope itself."""
    return [
        [
            {
                "role": "user",
                "content": render(
                    template,
                    rules=rules,
                    question=q,
                    answer=a,
                    in_scope=None if label_scope else bool(s),
                    criteria=criteria,
                ),
            }
        ]
        for q, a, s in zip(batch["question"], batch["answer"], batch["in_scope"])
    ]


def step(cfg) -> LLMStep:
    j = cfg.quality.judge
    label = not cfg.quality.critic.enabled  # no critic labelled each question's scope: the judge does
    return LLMStep(
        name="judge",
        table=TABLE,
        key="question_id",
        columns=("question_id", "seed_id", "topic", "in_scope", "question", "answer"),
        output=output_model(j.criteria, label),
        settings=j,
        # a new criterion, or who labels the scope, a new version
        template=j.template + json.dumps([c.model_dump() for c in j.criteria]) + ("label_scope" if label else ""),
        prompts=functools.partial(
            prompts, template=j.template, rules=cfg.use_case.rules, criteria=j.criteria, label_scope=label
        ),
        rows=functools.partial(verdict_rows, criteria=j.criteria, dropped=("question", "answer"), label_scope=label),
    )


def run(ctx: RunContext) -> StageResult:
    # Unfiltered by its own verdicts: a pair whose judgement failed is judged again.
    answered = ctx.read("synthetic_responses", kept=False).where(F.col("error").isNull() & F.col("answer").isNotNull())
    return llm_stage.run(ctx, step(ctx.cfg), answered)


STAGE = Stage(
    name="judge",
    help="score each answered pair per criterion (reasoning, then 1-3) and keep those that pass, into answer_verdicts",
    run=run,
    reads=("synthetic_responses",),
    writes=(TABLE,),
    config=JudgeConfig,
    section="quality.judge",
)
