"""Questions stage: `seed_questions` -> `synthetic_questions`, N new questions per seed from the teacher.

The LLM calls run in `mapInPandas` over seed partitions (executors on Databricks, Sail's workers
locally), never in a loop on the driver. A seed already answered with the same request
fingerprint is skipped; a regenerated seed replaces all of its old rows.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator

import pandas as pd
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, create_model
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth import llm, tables
from lakesynth.config import Config
from lakesynth.report import LLMTotals, StageResult, check_failure_rate
from lakesynth.tables import INT, B, L, S


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


REQUEST_SCHEMA = T.StructType(
    [
        T.StructField(n, t)
        for n, t in [
            ("seed_id", S),
            ("topic", S),
            ("in_scope", B),
            ("seed_question", S),
            ("messages", S),
            ("prompt_version", S),
            ("fingerprint", S),
        ]
    ]
)
GENERATED_SCHEMA = T.StructType(
    [
        T.StructField(n, t)
        for n, t in [
            ("seed_id", S),
            ("topic", S),
            ("in_scope", B),
            ("seed_question", S),
            ("prompt_version", S),
            ("fingerprint", S),
            ("model", S),
            ("reasoning", S),
            ("questions", T.ArrayType(S)),
            ("prompt_tokens", L),
            ("completion_tokens", L),
            ("latency_ms", L),
            ("attempts", INT),
            ("error", S),
            ("raw_output", S),
        ]
    ]
)


def render(template: str, **values) -> str:
    """Render in a sandbox: seed text is data, so braces or template syntax inside it stay literal."""
    return _compiled(template).render(**values)


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    # Compiling costs far more than rendering: once per template and process, not once per row.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(template)


def prompt_version(template: str) -> str:
    return hashlib.sha256(template.encode()).hexdigest()[:12]


def build_requests(seeds: DataFrame, *, cfg: Config, call: llm.Call) -> DataFrame:
    """One row per seed with its chat `messages` (JSON text) and the request's fingerprint."""
    return seeds.select("seed_id", "topic", "in_scope", F.col("question").alias("seed_question")).mapInPandas(
        functools.partial(
            _render_batches,
            template=cfg.questions.template,
            rules=cfg.use_case.rules,
            n=asked(cfg.questions.per_seed),
            call=call,
        ),
        REQUEST_SCHEMA,
    )


def _render_batches(
    batches: Iterator[pd.DataFrame], *, template: str, rules: str, n: int, call: llm.Call
) -> Iterator[pd.DataFrame]:
    version = prompt_version(template)
    for batch in batches:
        messages = [
            [{"role": "user", "content": render(template, rules=rules, topic=t, question=q, in_scope=bool(s), n=n)}]
            for t, q, s in zip(batch["topic"], batch["seed_question"], batch["in_scope"])
        ]
        yield batch.assign(
            messages=[json.dumps(m, ensure_ascii=False) for m in messages],
            prompt_version=version,
            fingerprint=[call.fingerprint(m) for m in messages],
        )


def _generate(batches: Iterator[pd.DataFrame], *, call: llm.Call, workers: int) -> Iterator[pd.DataFrame]:
    """Executor side: call the teacher for a partition's seeds with bounded async concurrency, one pool
    of requests across the partition's batches."""
    taken: collections.deque[pd.DataFrame] = collections.deque()

    def requests() -> Iterator[list[tuple[str, list[dict]]]]:
        for batch in batches:
            taken.append(batch)
            yield [(sid, json.loads(m)) for sid, m in zip(batch["seed_id"], batch["messages"])]

    for results in call.run_batches(requests(), workers=workers):
        yield _generated_frame(taken.popleft(), results)


def _generated_frame(batch: pd.DataFrame, results: list[llm.Result]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "seed_id": batch["seed_id"].values,
            "topic": batch["topic"].values,
            "in_scope": batch["in_scope"].values,
            "seed_question": batch["seed_question"].values,
            "prompt_version": batch["prompt_version"].values,
            "fingerprint": [r.fingerprint for r in results],
            "model": [r.model for r in results],
            "reasoning": [(r.output or {}).get("reasoning") for r in results],
            "questions": [(r.output or {}).get("questions") for r in results],
            "prompt_tokens": [r.prompt_tokens for r in results],
            "completion_tokens": [r.completion_tokens for r in results],
            "latency_ms": [r.latency_ms for r in results],
            "attempts": [r.attempts for r in results],
            "error": [r.error for r in results],
            "raw_output": [r.raw_output for r in results],
        }
    )


def _normalized(col) -> F.Column:
    return F.trim(F.regexp_replace(F.lower(col), r"[^\p{L}\p{N}]+", " "))


def to_question_rows(generated: DataFrame, *, run_id: str, keep: int) -> DataFrame:
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
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    )


def run(spark: SparkSession, cfg: Config, ctx) -> StageResult:
    seeds = tables.read(spark, cfg, tables.SEED_QUESTIONS)
    endpoint = ctx.endpoint()
    journal = tables.journal_dir(cfg, "questions")
    call = llm.Call(
        endpoint,
        cfg.teacher,
        output_model(asked(cfg.questions.per_seed)),
        cfg.questions.temperature,
        cfg.questions.max_tokens,
        journal_dir=journal,
        label="questions",
    )

    def pending(part: DataFrame, *columns: str) -> DataFrame:
        requests = build_requests(part, cfg=cfg, call=call)
        requests = requests.select(*columns) if columns else requests
        return tables.pending(spark, cfg, tables.SYNTHETIC_QUESTIONS, requests, "seed_id")

    # Counted on keys alone, so the rendered prompts of the whole table are never held at once.
    rows_in, attempted = seeds.count(), pending(seeds, "seed_id", "fingerprint").count()
    result = StageResult(rows_in=rows_in, tables=[tables.SYNTHETIC_QUESTIONS], metrics={"skipped": rows_in - attempted})
    if attempted == 0:
        return result
    llm.preflight(call, [(r.seed_id, json.loads(r.messages)) for r in pending(seeds).limit(1).collect()])
    totals, short = LLMTotals(), 0
    # A chunk is counted in rows written: each seed asks for per_seed questions.
    seeds_per_chunk = max(1, cfg.teacher.chunk_rows // cfg.questions.per_seed)
    parts = tables.chunks(seeds, "seed_id", attempted, seeds_per_chunk)
    for number, part in enumerate(parts, start=1):
        label = "questions" if len(parts) == 1 else f"questions {number}/{len(parts)}"
        chunk_call = dataclasses.replace(call, label=label)
        generated = (
            pending(part)
            .repartition(cfg.teacher.workers)
            .mapInPandas(functools.partial(_generate, call=chunk_call, workers=cfg.teacher.workers), GENERATED_SCHEMA)
        )
        # Staged twice: the raw LLM output (so no plan calls the endpoint again), then the exploded rows (so the
        # MERGE, which reads its source more than once, and the totals do not redo the dedup aggregates).
        rows = to_question_rows(
            tables.materialize(spark, cfg, "questions", generated), run_id=cfg.run_id, keep=cfg.questions.per_seed
        )
        staged = tables.materialize(spark, cfg, "question_rows", rows)
        tables.upsert(spark, cfg, tables.SYNTHETIC_QUESTIONS, staged, replace_by="seed_id")
        totals.add(staged, group="seed_id")
        # A seed whose teacher reply held duplicates or copies of the seed keeps fewer than `per_seed`: say so.
        kept = staged.where("error IS NULL").groupBy("seed_id").count()
        short += kept.where(F.col("count") < cfg.questions.per_seed).count()
    llm.clear_journal(journal)
    result.rows_out, result.errors = totals.rows, totals.failed
    result.metrics.update(totals.metrics(cfg), seeds_short=short)
    check_failure_rate("questions", totals, attempted, cfg.questions.max_failure_rate)
    return result
