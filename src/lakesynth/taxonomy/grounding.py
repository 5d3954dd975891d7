"""Grounding check: `leaf_pairs` -> `grounding_verdicts`, each generated leaf pair scored 1-3 per criterion.

The quality gate of taxonomy generation (RAGAS' faithfulness and answer relevancy, and InstructLab's check that a
knowledge question stands without its document). An LLM judge (the endpoint of `quality.judge`, unless
`taxonomy.grounding` names its own) writes its reasoning first, then a score per criterion that applies:
- *faithfulness*: every claim of the answer is supported by the context (pairs with a context);
- *relevancy*: the answer addresses the question (every pair);
- *self_contained*: the question makes sense without the document (knowledge pairs only: a grounded skill's
  question is asked beside its context, as the student will see it, so it may point at it).
A criterion that does not apply is null. A pair is kept when every applicable score reaches `min_score`; else its
`drop_reason` is the first that failed (`grounding:faithfulness`, `grounding:relevancy`, `grounding:self_contained`).
The scores are kept, so a new `min_score` applies to every row with no call paid again. A reply that fails to parse
is the row's error (`grounding_error`), judged again on the next run. Only pairs generated without error are judged.
"""

from __future__ import annotations

import functools
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult, disabled
from lakesynth.core.tables import INT, S
from lakesynth.core.templates import render
from lakesynth.taxonomy import switch

CRITERIA = {
    "faithfulness": "Every claim of the answer is supported by the context; nothing is added from elsewhere.",
    "relevancy": "The answer addresses the question, directly and completely.",
    "self_contained": "The question makes sense to someone who has not seen the document: it names what it asks "
    "about and does not refer to 'the passage', 'the text' or 'the document'.",
}
# The criteria that apply to each kind of pair, in the order a drop reason names the first failed.
APPLIES = {
    "freeform": ("relevancy",),
    "grounded": ("faithfulness", "relevancy"),
    "knowledge": ("faithfulness", "relevancy", "self_contained"),
}

TEMPLATE = """You check one example written to train an assistant.
{% if context %}
The context{% if mode == "knowledge" %} (a passage of a document){% endif %}:
<context>
{{ context }}
</context>
{% endif %}
Question:
{{ question }}

Answer:
{{ answer }}

Score the example on each criterion from 1 to 3 (3: fully met, 2: met but for a minor flaw, 1: not met):
{% for name, text in criteria %}- {{ name }}: {{ text }}
{% endfor %}
First write "reasoning": one or two sentences per criterion. Then give the scores: {{ names }}."""


class GroundingConfig(LLMStageConfig):
    enabled: bool = Field(True, description="Score each taxonomy pair's grounding and keep only those that pass.")
    endpoint: str = Field("judge", description="The endpoint (a name under endpoints:) this check calls.")
    min_score: int = Field(2, ge=1, le=3, description="The lowest score (1-3) a kept pair may have on a criterion.")
    template: str = Field(TEMPLATE, description="The grounding judge's Jinja prompt (mode, context, question, ...).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=16, description="Completion token limit.")


Score = Literal[1, 2, 3]


class Verdict(BaseModel):
    """The judge's reply: the reasoning first, so the scores follow from it."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="One or two sentences per criterion")


def output_model(mode: str) -> type[Verdict]:
    """The reply of a `mode` pair: its reasoning, then a 1-3 score for each criterion that applies to it."""
    scores = {name: (Score, Field(description=CRITERIA[name])) for name in APPLIES[mode]}
    return create_model(f"{mode.title()}Verdict", __base__=Verdict, **scores)


TABLE = tables.verdict(
    "grounding_verdicts",
    [("pair_id", S), ("leaf", S), ("kind", S)]
    + [(name, INT) for name in CRITERIA]
    + [("reasoning", S)]
    + tables.LLM_ACCOUNTING,
    judges="leaf_pairs",
    key="pair_id",
)


def pair_mode(kind: F.Column, context: F.Column) -> F.Column:
    return F.when(kind == "knowledge", "knowledge").when(context.isNotNull(), "grounded").otherwise("freeform")


def prompts(batch: pd.DataFrame, *, template: str, mode: str) -> list[list[dict]]:
    """Rows -> requests: one judgement per pair, on the criteria that apply to it."""
    criteria = [(name, CRITERIA[name]) for name in APPLIES[mode]]
    names = ", ".join(APPLIES[mode])
    return [
        [
            {
                "role": "user",
                "content": render(template, mode=mode, context=c, question=q, answer=a, criteria=criteria, names=names),
            }
        ]
        for c, q, a in zip(batch["context"], batch["question"], batch["answer"])
    ]


def verdict(min_score: int, applies: tuple[str, ...], ok: F.Column) -> tuple[F.Column, F.Column]:
    """`keep` and `drop_reason` from the score columns (null where a criterion does not apply)."""
    reason = F.when(~ok | F.col("relevancy").isNull(), F.lit("grounding_error"))
    for name in applies:
        reason = reason.when(F.col(name) < min_score, F.lit(f"grounding:{name}"))
    return reason.isNull(), reason


def to_verdict_rows(replies: DataFrame, *, mode: str, min_score: int) -> DataFrame:
    """Replies -> rows: the reasoning and scores, `keep` when every applicable score reaches `min_score`."""
    reply = llm_stage.parsed(replies, output_model(mode))
    scored = replies.select(
        *[c for c in replies.columns if c not in ("output", "context", "question", "answer")],
        *[
            (reply.getField(name).cast("int") if name in APPLIES[mode] else F.lit(None).cast("int")).alias(name)
            for name in CRITERIA
        ],
        reply.getField("reasoning").alias("reasoning"),
    )
    keep, reason = verdict(min_score, APPLIES[mode], F.col("error").isNull())
    return scored.select("*", keep.alias("keep"), reason.alias("drop_reason"))


def step(cfg, mode: str) -> LLMStep:
    g = cfg.taxonomy.grounding
    return LLMStep(
        name="grounding",
        table=TABLE,
        key="pair_id",
        columns=("pair_id", "leaf", "kind", "context", "question", "answer"),
        output=output_model(mode),
        settings=g,
        template=g.template,
        prompts=functools.partial(prompts, template=g.template, mode=mode),
        rows=functools.partial(to_verdict_rows, mode=mode, min_score=g.min_score),
    )


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    g = cfg.taxonomy.grounding
    # Unfiltered by its own verdicts: a pair whose judgement failed is judged again.
    pairs = ctx.read("leaf_pairs", kept=False).where(F.col("error").isNull() & F.col("question").isNotNull())
    pairs = pairs.withColumn("_mode", pair_mode(F.col("kind"), F.col("context")))
    modes = [r._mode for r in pairs.select("_mode").distinct().collect()]
    result = StageResult(tables=[TABLE])
    for mode in [m for m in APPLIES if m in modes]:
        result.add(llm_stage.run(ctx, step(cfg, mode), pairs.where(F.col("_mode") == mode)))
    # The scores are kept; a new min_score applies to every row at once, with no call paid again.
    scores = {name: f"grounding:{name}" for name in CRITERIA}
    tables.rekeep(ctx.spark, ctx.rt, TABLE, g.min_score, scores=scores, required="relevancy", failed="grounding_error")
    result.metrics.update(tables.verdict_counts(tables.read(ctx.spark, ctx.rt, TABLE)))
    return result


STAGE = Stage(
    name="grounding",
    help="score each taxonomy pair 1-3 for faithfulness to its context, relevancy and a self-contained question "
    "(the criteria that apply to it) into grounding_verdicts",
    run=run,
    reads=("leaf_pairs",),
    writes=(TABLE,),
    config=GroundingConfig,
    section="taxonomy.grounding",
    off=lambda cfg: switch.no_taxonomy(cfg) or disabled(cfg, "taxonomy.grounding"),
)
