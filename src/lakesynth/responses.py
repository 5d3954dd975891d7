"""Responses stage: `synthetic_questions` -> `synthetic_responses`, answers by batch `ai_query`.

One SQL statement, the same text on both engines: Databricks runs its built-in `ai_query`
(batch inference); locally lakesynth registers its own under that name (llm.ai_query_udf).
The request carries the domain rules and the reasoning instructions; the response format keeps
the reasoning apart from the answer, and only the answer becomes training data.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth import engine, llm, tables
from lakesynth.config import Config
from lakesynth.questions import prompt_version, render
from lakesynth.report import LLMTotals, StageResult, check_failure_rate
from lakesynth.tables import B, S

# The top-level field is dropped by ai_query: the answer is {"reasoning": …, "answer": …}.
RESPONSE_FORMAT = "STRUCT<response: STRUCT<reasoning: STRING, answer: STRING>>"
ANSWER_SCHEMA = "reasoning STRING, answer STRING"

AI_QUERY_SQL = """SELECT question_id, seed_id, topic, in_scope, question, prompt_version, fingerprint,
  ai_query(
    '{endpoint}',
    request,
    modelParameters => named_struct('max_tokens', {max_tokens}, 'temperature', {temperature}),
    responseFormat => '{response_format}',
    failOnError => false
  ) AS response
FROM {source}"""

REQUEST_SCHEMA = T.StructType(
    [
        T.StructField(n, t)
        for n, t in [
            ("question_id", S),
            ("seed_id", S),
            ("topic", S),
            ("in_scope", B),
            ("question", S),
            ("request", S),
            ("prompt_version", S),
            ("fingerprint", S),
        ]
    ]
)


def build_requests(questions: DataFrame, *, cfg: Config, call: llm.Call) -> DataFrame:
    """One row per answerable question with its `request` string (rules + instructions + question)."""
    answerable = questions.where(F.col("error").isNull() & F.col("question").isNotNull())
    return answerable.select("question_id", "seed_id", "topic", "in_scope", "question").mapInPandas(
        functools.partial(_render_batches, template=cfg.responses.template, rules=cfg.use_case.rules, call=call),
        REQUEST_SCHEMA,
    )


def _render_batches(
    batches: Iterator[pd.DataFrame], *, template: str, rules: str, call: llm.Call
) -> Iterator[pd.DataFrame]:
    version = prompt_version(template)
    for batch in batches:
        requests = [
            render(template, rules=rules, question=q, topic=t, in_scope=bool(s))
            for q, t, s in zip(batch["question"], batch["topic"], batch["in_scope"])
        ]
        yield batch.assign(
            request=requests,
            prompt_version=version,
            fingerprint=[call.fingerprint([{"role": "user", "content": r}]) for r in requests],
        )


def ai_query_sql(source: str, *, endpoint: str, max_tokens: int, temperature: float) -> str:
    """The batch-inference statement over a view of pending requests."""
    return AI_QUERY_SQL.format(
        endpoint=endpoint.replace("'", "\\'"),
        max_tokens=int(max_tokens),
        temperature=float(temperature),
        response_format=RESPONSE_FORMAT,
        source=source,
    )


def parse_responses(answered: DataFrame, *, model: str, run_id: str) -> DataFrame:
    """One `synthetic_responses` row per answered request; the struct's field names are read from
    its schema, because the built-in and the documentation disagree on them."""
    fields = answered.schema["response"].dataType.names
    error_field = next(f for f in fields if "error" in f.lower())
    result_field = next(f for f in fields if f != error_field)
    result = F.col("response").getField(result_field)
    parsed = F.from_json(result, ANSWER_SCHEMA)
    answer = parsed.getField("answer")
    error = F.coalesce(
        F.col("response").getField(error_field),
        F.when(
            result.isNull() | answer.isNull() | (F.trim(answer) == ""), F.lit("EmptyAnswer: the reply had no answer")
        ),
    )
    return answered.select(
        "question_id",
        "seed_id",
        "topic",
        "in_scope",
        "question",
        F.when(error.isNull(), answer).alias("answer"),
        parsed.getField("reasoning").alias("reasoning"),
        F.lit(model).alias("model"),
        "prompt_version",
        "fingerprint",
        F.lit(None).cast("bigint").alias("prompt_tokens"),
        F.lit(None).cast("bigint").alias("completion_tokens"),
        F.lit(None).cast("bigint").alias("latency_ms"),
        F.lit(None).cast("int").alias("attempts"),
        error.alias("error"),
        F.when(error.isNotNull(), result).alias("raw_output"),
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    )


JOURNAL_SCHEMA = "fingerprint STRING, prompt_tokens BIGINT, completion_tokens BIGINT, latency_ms BIGINT, attempts INT"


def with_journal_accounting(spark: SparkSession, rows: DataFrame, journal: str) -> DataFrame:
    """Tokens, latency and attempts from the local ai_query's journal (Databricks' does not report them)."""
    from pathlib import Path

    if not list(Path(journal).glob("*.jsonl")):
        return rows
    usage = (
        spark.read.schema(JOURNAL_SCHEMA)
        .json(journal)
        .join(rows.select("fingerprint").distinct(), "fingerprint", "left_semi")  # this chunk's, not the journal's
        .groupBy("fingerprint")
        .agg(*[F.max(c).alias(f"_{c}") for c in ("prompt_tokens", "completion_tokens", "latency_ms", "attempts")])
    )
    joined = rows.join(usage, "fingerprint", "left")
    for c in ("prompt_tokens", "completion_tokens", "latency_ms", "attempts"):
        joined = joined.withColumn(c, F.coalesce(F.col(c), F.col(f"_{c}")))
    return joined.select(*tables.SYNTHETIC_RESPONSES.names)


def run(spark: SparkSession, cfg: Config, ctx) -> StageResult:
    questions = tables.read(spark, cfg, tables.SYNTHETIC_QUESTIONS)
    journal = tables.journal_dir(cfg, "responses")
    local = not engine.on_databricks()
    endpoint = ctx.endpoint() if local else llm.Endpoint("databricks", cfg.teacher.model)
    call = llm.Call(
        endpoint,
        cfg.teacher,
        llm.model_from_ddl(RESPONSE_FORMAT),
        cfg.responses.temperature,
        cfg.responses.max_tokens,
        journal_dir=journal,
        label="responses",
    )

    def pending(part: DataFrame, *columns: str) -> DataFrame:
        requests = build_requests(part, cfg=cfg, call=call)
        requests = requests.select(*columns) if columns else requests
        return tables.pending(spark, cfg, tables.SYNTHETIC_RESPONSES, requests, "question_id")

    # Counted on keys alone, so the rendered requests of the whole table are never held at once.
    rows_in = questions.where("error IS NULL").count()
    attempted = pending(questions, "question_id", "fingerprint").count()
    result = StageResult(rows_in=rows_in, tables=[tables.SYNTHETIC_RESPONSES], metrics={"skipped": rows_in - attempted})
    if attempted == 0:
        return result
    if local:
        first = pending(questions).limit(1).collect()
        llm.preflight(call, [(r.question_id, [{"role": "user", "content": r.request}]) for r in first])
    totals = LLMTotals()
    parts = tables.chunks(questions, "question_id", attempted, cfg.teacher.chunk_rows)
    for number, part in enumerate(parts, start=1):
        if local:  # the UDF carries its progress label; registering it again per chunk replaces it
            label = "responses" if len(parts) == 1 else f"responses {number}/{len(parts)}"
            udf = llm.ai_query_udf(endpoint, cfg.teacher, journal_dir=journal, workers=cfg.teacher.workers, label=label)
            spark.udf.register("ai_query", udf)
        view = f"lakesynth_pending_{uuid.uuid4().hex}"
        pending(part).repartition(cfg.teacher.workers).createOrReplaceTempView(view)
        try:
            answered = spark.sql(
                ai_query_sql(
                    view,
                    endpoint=cfg.teacher.model,
                    max_tokens=cfg.responses.max_tokens,
                    temperature=cfg.responses.temperature,
                )
            )
            staged = parse_responses(
                tables.materialize(spark, cfg, "responses", answered), model=cfg.teacher.model, run_id=cfg.run_id
            )
        finally:
            spark.catalog.dropTempView(view)
        if local:
            staged = with_journal_accounting(spark, staged, journal)
        staged = tables.materialize(spark, cfg, "response_rows", staged)
        tables.upsert(spark, cfg, tables.SYNTHETIC_RESPONSES, staged)
        totals.add(staged, group="question_id")
    llm.clear_journal(journal)
    result.rows_out, result.errors = totals.rows, totals.failed
    result.metrics.update(totals.metrics(cfg))
    check_failure_rate("responses", totals, attempted, cfg.responses.max_failure_rate)
    return result
