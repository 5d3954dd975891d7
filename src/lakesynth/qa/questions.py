"""Questions stage: `seed_questions` -> `synthetic_questions`, N new questions per seed from the teacher.

Two hooks on the shared LLM loop (llm_stage.py): a seed becomes one request, a reply becomes up to
`per_seed` question rows. A regenerated seed replaces all of its old rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.core.templates import render


class QuestionsConfig(LLMStageConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "questions.j2"
    per_seed: int = Field(3, ge=1, le=50, description="New questions the teacher writes per seed.")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature.")


TABLE = tables.contract(
    "synthetic_questions",
    [("question_id", S), ("seed_id", S), ("topic", S), ("in_scope", B), ("question", S), ("reasoning", S)]
    + tables.LLM_ACCOUNTING,
    key="question_id",
    parent="seed_id",
    parent_table="seed_questions",
)


class GeneratedQuestions(BaseModel):
    """The teacher's reply: reasoning first, so the questions follow from it."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="Analysis of the seed's topic and intent, and the subtopics to cover")
    questions: list[str] = Field(description="The new customer questions")


def output_model(count: int) -> type[GeneratedQuestions]:
    """GeneratedQuestions with exactly `count` questions, enforced by the schema the endpoint decodes with."""
    return create_model(
        "GeneratedQuestions",
        __base__=GeneratedQuestions,
        questions=(list[str], Field(min_length=count, max_length=count, description="The new customer questions")),
    )


def asked(per_seed: int) -> int:
    """Questions asked of the teacher per seed: one spare, so dropping a duplicate or a copy of the seed
    still leaves `per_seed`."""
    return per_seed + 1


def prompts(batch: pd.DataFrame, *, template: str, rules: str, n: int) -> list[list[dict]]:
    """Rows -> requests: one user message per seed, asking for `n` new questions."""
    return [
        [{"role": "user", "content": render(template, rules=rules, topic=t, question=q, in_scope=bool(s), n=n)}]
        for t, q, s in zip(batch["topic"], batch["seed_question"], batch["in_scope"])
    ]


def replies_to_rows(replies: DataFrame, *, keep: int) -> DataFrame:
    """Replies -> rows: the reply's fields as columns, then `to_question_rows`."""
    reply = llm_stage.parsed(replies, GeneratedQuestions)
    generated = replies.select(
        "*", reply.getField("reasoning").alias("reasoning"), reply.getField("questions").alias("questions")
    ).drop("output")
    return to_question_rows(generated, keep=keep)


def _seeds_short(staged: DataFrame, *, per_seed: int) -> dict[str, int]:
    # A seed whose teacher reply held duplicates or copies of the seed keeps fewer than `per_seed`: say so.
    kept = staged.where("error IS NULL").groupBy("seed_id").count()
    return {"seeds_short": kept.where(F.col("count") < per_seed).count()}


def _normalized(col) -> F.Column:
    return F.trim(F.regexp_replace(F.lower(col), r"[^\p{L}\p{N}]+", " "))


def to_question_rows(generated: DataFrame, *, keep: int) -> DataFrame:
    """One row per usable generated question (at most `keep` per seed), or one error row for a seed
    that yielded none.

    Empty strings, near-copies of the seed (same words, any case or punctuation) and duplicates
    within a seed are dropped. A request's tokens and latency sit on its first row only, so
    summing a column gives the true total.
    """
    exploded = generated.select("*", F.posexplode_outer("questions").alias("pos", "candidate"))
    norm = _normalized(F.col("candidate"))
    acceptable = (
        F.col("error").isNull()
        & F.col("candidate").isNotNull()
        & (norm != "")
        & (norm != _normalized(F.col("seed_question")))
    )
    seed_cols = [c for c in generated.columns if c not in ("questions",)]
    questions = (
        exploded.where(acceptable)
        .withColumn("_norm", norm)
        .groupBy(*seed_cols, "_norm")
        .agg(F.min(F.struct("pos", "candidate")).alias("_first"))
        .select(*seed_cols, "_norm", F.col("_first.pos").alias("pos"), F.trim("_first.candidate").alias("question"))
        .withColumn("question_id", F.substring(F.sha2(F.concat_ws("\u001f", "seed_id", "_norm"), 256), 1, 16))
    )
    rank = F.row_number().over(Window.partitionBy("seed_id").orderBy("pos"))
    questions = questions.withColumn("_rank", rank).where(F.col("_rank") <= keep).drop("_rank")
    usable = questions.select("seed_id").distinct().withColumn("_has", F.lit(True))
    failed = (
        generated.join(usable, "seed_id", "left_anti")
        .withColumn("question", F.lit(None).cast("string"))
        .withColumn(
            "error",
            F.coalesce(
                F.col("error"),
                F.concat(
                    F.lit("NoUsableQuestions: the teacher returned "),
                    F.coalesce(F.size("questions"), F.lit(0)).cast("string"),
                    F.lit(" question(s), all empty, duplicates or copies of the seed"),
                ),
            ),
        )
        .withColumn("raw_output", F.coalesce("raw_output", F.to_json(F.struct("reasoning", "questions"))))
        .withColumn("question_id", F.substring(F.sha2(F.concat_ws("\u001f", "seed_id", F.lit("<error>")), 256), 1, 16))
        .withColumn("pos", F.lit(0))
    )
    cols = [
        "question_id",
        "seed_id",
        "topic",
        "in_scope",
        "question",
        "reasoning",
        "model",
        "prompt_version",
        "fingerprint",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "attempts",
        "error",
        "raw_output",
        "pos",
    ]
    both = questions.select(cols).unionByName(failed.select(cols))
    first = F.col("pos") == F.min("pos").over(Window.partitionBy("seed_id"))
    return both.select(
        *[c for c in cols if c not in ("prompt_tokens", "completion_tokens", "latency_ms", "attempts", "pos")],
        *[
            F.when(first, F.col(c)).otherwise(F.lit(0)).alias(c)
            for c in ("prompt_tokens", "completion_tokens", "latency_ms", "attempts")
        ],
    )


def step(cfg) -> LLMStep:
    q = cfg.questions
    return LLMStep(
        name="questions",
        table=TABLE,
        key="seed_id",
        columns=("seed_id", "topic", "in_scope", "seed_question"),
        output=output_model(asked(q.per_seed)),
        settings=q,
        template=q.template,
        prompts=functools.partial(prompts, template=q.template, rules=cfg.use_case.rules, n=asked(q.per_seed)),
        rows=functools.partial(replies_to_rows, keep=q.per_seed),
        rows_per_request=q.per_seed,
        replace_by="seed_id",
        metrics=functools.partial(_seeds_short, per_seed=q.per_seed),
    )


ANGLES = (
    "These questions are too alike: write questions that take different angles from them (another situation, goal, "
    "product or kind of customer), not rephrasings of them."
)


def topup_prompts(batch: pd.DataFrame, *, template: str, rules: str, missing: dict[str, int]) -> list[list[dict]]:
    """Rows -> requests for a top-up round: the seed's usual request for its missing questions (one spare), with
    the questions it already has, so the new ones differ from them; a seed the diversity gate sent back
    (`missing.angles`) also asks for different angles (only its request changes, so no other is paid again)."""
    angles = getattr(missing, "angles", frozenset())
    requests = []
    for seed_id, t, q, s, have in zip(
        batch["seed_id"], batch["topic"], batch["seed_question"], batch["in_scope"], batch["have"]
    ):
        n = asked(missing[seed_id])
        text = render(template, rules=rules, topic=t, question=q, in_scope=bool(s), n=n)
        listed = "\n".join(f"- {h}" for h in sorted(have if have is not None else []))
        content = f"{text}\n\nQuestions it already has (write others):\n{listed}"
        requests.append([{"role": "user", "content": content + (f"\n{ANGLES}" if seed_id in angles else "")}])
    return requests


def top_up(ctx: RunContext, missing: dict[str, int]) -> StageResult:
    """A top-up round (core/rounds.py): each seed in `missing` asks for the questions it misses; its other
    questions stay."""
    q, seeds = ctx.cfg.questions, ctx.read("seed_questions")
    have = ctx.read(TABLE).where("error IS NULL").groupBy("seed_id").agg(F.collect_list("question").alias("have"))
    short = seeds.where(F.col("seed_id").isin(list(missing))).join(have, "seed_id", "left")
    short = short.withColumnRenamed("question", "seed_question")
    results = []
    for count in sorted(set(missing.values())):  # the schema fixes the number of questions: one step per count
        ids = [s for s, n in missing.items() if n == count]
        round_step = dataclasses.replace(
            step(ctx.cfg),
            columns=("seed_id", "topic", "in_scope", "seed_question", "have"),
            output=output_model(asked(count)),
            prompts=functools.partial(
                topup_prompts, template=q.template, rules=ctx.cfg.use_case.rules, missing=missing
            ),
            rows=functools.partial(replies_to_rows, keep=count),
            rows_per_request=count,
            replace_by=None,  # the seed's questions so far stay
            metrics=None,
        )
        results.append(llm_stage.run(ctx, round_step, short.where(F.col("seed_id").isin(ids))))
    return StageResult(
        rows_in=sum(r.rows_in for r in results),
        rows_out=sum(r.rows_out for r in results),
        errors=sum(r.errors for r in results),
        tables=[TABLE],
    )


def run(ctx: RunContext) -> StageResult:
    seeds = ctx.read("seed_questions")
    if ctx.cfg.seed.pairs:  # the user's own pairs: each question is its seed's one question, nothing generated
        return llm_stage.imported(
            ctx, TABLE, seeds.select(F.col("seed_id").alias("question_id"), "seed_id", "topic", "in_scope", "question")
        )
    return llm_stage.run(ctx, step(ctx.cfg), seeds.withColumnRenamed("question", "seed_question"))


STAGE = Stage(
    name="questions",
    help="generate new questions from the seeds into synthetic_questions",
    run=run,
    reads=("seed_questions",),
    writes=(TABLE,),
    config=QuestionsConfig,
    top_up=top_up,
)
