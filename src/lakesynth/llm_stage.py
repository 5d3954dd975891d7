"""The one loop every LLM stage runs: a stage supplies two hooks, "rows -> requests" and "replies -> rows".

The loop owns what no stage should repeat: rendering the requests and their fingerprints on executors,
what is still to pay for (`tables.pending`), a one-token preflight, chunks of `teacher.chunk_rows`, the
calls (`mapInPandas`, or one `ai_query` SQL statement), staging so no plan calls the endpoint twice, the
MERGE, the totals, clearing the journal and the failure rate. Its guarantees hold for every stage on it:
a failed call is a row with its error, a rerun pays only for what is missing, memory is bounded by a chunk.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import BaseModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth import llm, tables
from lakesynth.config import LLMStageConfig, TeacherConfig
from lakesynth.errors import StageError
from lakesynth.stage import RunContext, StageResult
from lakesynth.tables import S, Table
from lakesynth.templates import prompt_version

# What the loop adds to a request's columns once it is answered; a stage's `rows` hook reads `output`
# (the reply as JSON text, valid against the stage's output model) or `error`.
REPLY_FIELDS = [("model", S), ("output", S), *tables.LLM_RESULT]
ACCOUNTING = ("prompt_tokens", "completion_tokens", "latency_ms", "attempts")

AI_QUERY_SQL = """SELECT {columns},
  ai_query(
    '{endpoint}',
    request,
    modelParameters => named_struct('max_tokens', {max_tokens}, 'temperature', {temperature}),
    responseFormat => '{response_format}',
    failOnError => false
  ) AS response
FROM {source}"""


@dataclass(frozen=True)
class LLMStep:
    """What an LLM stage supplies to the loop.

    Args:
        prompts: rows -> requests. Given a pandas batch of `columns`, the chat messages of each row. Pure and
            picklable (a module-level function, parameters bound with functools.partial): it runs on executors.
        rows: replies -> rows. Given the replies (the request columns, `prompt_version`, `fingerprint` and
            REPLY_FIELDS), the rows of `table`; the loop adds `run_id` and `created_at`.
        via_ai_query: call with one `ai_query` SQL statement (Databricks' built-in batch inference there, a
            local UDF of the same name here) instead of `mapInPandas`. `prompts` then returns one user message.
        rows_per_request: rows a request writes, so a chunk holds about `teacher.chunk_rows` written rows.
        replace_by: a regenerated `key` replaces all of its old rows with the same value of this column.
        metrics: extra summary figures from a chunk's staged rows, summed over chunks.
        json_schema: the schema the endpoint is asked for, when narrower than `output`'s (llm.Call).
        fingerprint_extra: what else decides a row's result (llm.Call), e.g. the embeddings model that scores it.
    """

    name: str
    table: Table
    key: str
    columns: tuple[str, ...]
    output: type[BaseModel]
    settings: LLMStageConfig
    template: str
    prompts: Callable[[pd.DataFrame], list[list[dict]]]
    rows: Callable[[DataFrame], DataFrame]
    via_ai_query: bool = False
    rows_per_request: int = 1
    replace_by: str | None = None
    metrics: Callable[[DataFrame], dict[str, int]] | None = None
    json_schema: dict | None = None
    fingerprint_extra: dict | None = None

    @property
    def prompt_version(self) -> str:
        return prompt_version(self.template)


def request_schema(source: DataFrame, step: LLMStep) -> T.StructType:
    carried = [source.schema[c] for c in step.columns]
    extra = ["messages", "prompt_version", "fingerprint"] + (["request"] if step.via_ai_query else [])
    return T.StructType(carried + [T.StructField(n, S) for n in extra])


def requests(source: DataFrame, step: LLMStep, call: llm.Call) -> DataFrame:
    """One row per source row with its chat `messages` (JSON text), prompt version and request fingerprint."""
    return source.select(*step.columns).mapInPandas(
        functools.partial(
            _render, prompts=step.prompts, call=call, version=step.prompt_version, ai_query=step.via_ai_query
        ),
        request_schema(source, step),
    )


def _render(
    batches: Iterator[pd.DataFrame], *, prompts, call: llm.Call, version: str, ai_query: bool
) -> Iterator[pd.DataFrame]:
    for batch in batches:
        messages = prompts(batch)
        extra = {"request": [m[-1]["content"] for m in messages]} if ai_query else {}
        yield batch.assign(
            messages=[json.dumps(m, ensure_ascii=False) for m in messages],
            prompt_version=version,
            fingerprint=[call.fingerprint(m) for m in messages],
            **extra,
        )


def _call(batches: Iterator[pd.DataFrame], *, call: llm.Call, key: str, workers: int) -> Iterator[pd.DataFrame]:
    """Executor side: a partition's requests through one pool of requests across its batches."""
    taken: collections.deque[pd.DataFrame] = collections.deque()

    def keyed() -> Iterator[list[tuple[str, list[dict]]]]:
        for batch in batches:
            taken.append(batch)
            yield [(str(k), json.loads(m)) for k, m in zip(batch[key], batch["messages"])]

    for results in call.run_batches(keyed(), workers=workers):
        yield replies_frame(taken.popleft().drop(columns=["messages"]), results)


def replies_frame(batch: pd.DataFrame, results: list[llm.Result]) -> pd.DataFrame:
    """The batch's columns with each request's result (REPLY_FIELDS) beside it."""
    return batch.assign(
        fingerprint=[r.fingerprint for r in results],
        model=[r.model for r in results],
        output=[json.dumps(r.output, ensure_ascii=False) if r.error is None else None for r in results],
        prompt_tokens=[r.prompt_tokens for r in results],
        completion_tokens=[r.completion_tokens for r in results],
        latency_ms=[r.latency_ms for r in results],
        attempts=[r.attempts for r in results],
        error=[r.error for r in results],
        raw_output=[r.raw_output for r in results],
    )


def reply_schema(requests_df: DataFrame) -> T.StructType:
    kept = [f for f in requests_df.schema.fields if f.name not in ("messages", "request")]
    return T.StructType(kept + [T.StructField(n, t) for n, t in REPLY_FIELDS])


def parsed(replies: DataFrame, output: type[BaseModel]) -> F.Column:
    """The reply as a struct of the output model's fields (null where the request failed)."""
    return F.from_json(F.col("output"), llm.spark_ddl(output))


def ai_query_sql(source: str, columns: list[str], *, endpoint: str, step: LLMStep) -> str:
    """The batch-inference statement over a view of pending requests; the same text on both engines."""
    return AI_QUERY_SQL.format(
        columns=", ".join(f"`{c}`" for c in columns),
        endpoint=endpoint.replace("'", "\\'"),
        max_tokens=int(step.settings.max_tokens),
        temperature=float(step.settings.temperature),
        response_format=llm.response_format(step.output),
        source=source,
    )


def ai_query_replies(answered: DataFrame, *, model: str) -> DataFrame:
    """The `ai_query` result as REPLY_FIELDS, in whichever shape the runtime returns it (the built-in, its
    documentation and its versions disagree: llm.ai_query.reply_columns reads them all)."""
    from lakesynth.llm.ai_query import reply_columns

    result, error = reply_columns(answered.schema["response"])
    carried = [c for c in answered.columns if c != "response"]
    return answered.select(
        *carried,
        F.lit(model).alias("model"),
        F.when(error.isNull(), result).alias("output"),
        *[F.lit(None).cast(t).alias(n) for n, t in REPLY_FIELDS if n in ACCOUNTING],
        error.alias("error"),
        F.when(error.isNotNull(), result).alias("raw_output"),
    )


JOURNAL_SCHEMA = "fingerprint STRING, prompt_tokens BIGINT, completion_tokens BIGINT, latency_ms BIGINT, attempts INT"


def with_journal_accounting(ctx: RunContext, replies: DataFrame, journal: str) -> DataFrame:
    """Tokens, latency and attempts from the local ai_query's journal (Databricks' does not report them)."""
    from pathlib import Path

    if not list(Path(journal).glob("*.jsonl")):
        return replies
    usage = (
        ctx.spark.read.schema(JOURNAL_SCHEMA)
        .json(journal)
        .join(replies.select("fingerprint").distinct(), "fingerprint", "left_semi")  # this chunk's only
        .groupBy("fingerprint")
        .agg(*[F.max(c).alias(f"_{c}") for c in ACCOUNTING])
    )
    joined = replies.join(usage, "fingerprint", "left")
    for c in ACCOUNTING:
        joined = joined.withColumn(c, F.coalesce(F.col(c), F.col(f"_{c}")))
    return joined.select(*replies.columns)


@dataclass
class LLMTotals:
    """Rows, failed requests and tokens of what an LLM stage wrote in this invocation, summed over chunks."""

    rows: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)
    extra: collections.Counter = field(default_factory=collections.Counter)

    def add(self, rows: DataFrame, *, group: str) -> None:
        agg = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(F.when(F.col("error").isNotNull(), F.col(group))).alias("failed"),
            F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("prompt_tokens"),
            F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("completion_tokens"),
        ).collect()[0]
        self.rows += agg.rows
        self.failed += agg.failed
        self.prompt_tokens += int(agg.prompt_tokens)
        self.completion_tokens += int(agg.completion_tokens)
        if agg.failed and len(self.errors) < 3:
            self.errors += [r.error for r in rows.where("error IS NOT NULL").select("error").limit(3).collect()]

    def metrics(self, teacher: TeacherConfig) -> dict[str, Any]:
        metrics: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        cost = teacher.cost(self.prompt_tokens, self.completion_tokens)
        if cost is not None:
            metrics["cost_usd"] = round(cost, 4)
        return {**metrics, **self.extra}


def check_failure_rate(stage: str, totals: LLMTotals, attempted: int, limit: float) -> None:
    """Fail the stage (its rows are already written, errors included) when too many rows failed."""
    if attempted and totals.failed / attempted > limit:
        raise StageError(
            f"{stage}: {totals.failed} of {attempted} requests failed (max_failure_rate {limit:.0%}); "
            f"rows and errors are written, a rerun retries only the failed ones. First errors:\n  "
            + "\n  ".join(totals.errors[:3])
        )


def run(ctx: RunContext, step: LLMStep, source: DataFrame) -> StageResult:
    """Call the teacher for every row of `source` that `step.table` lacks a successful row for, chunk by chunk."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    builtin = step.via_ai_query and rt.databricks  # Databricks' own ai_query calls the serving endpoint
    teacher = step.settings.endpoint(cfg.teacher)  # the teacher's, unless the stage names its own endpoint
    endpoint = llm.Endpoint("databricks", teacher.model) if builtin else ctx.endpoint(teacher)
    journal = rt.journal_dir(step.name)
    call = llm.Call(
        endpoint,
        teacher,
        step.output,
        step.settings.temperature,
        step.settings.max_tokens,
        journal_dir=journal,
        label=step.name,
        json_schema=step.json_schema,
        fingerprint_extra=step.fingerprint_extra,
    )

    def pending(part: DataFrame, *columns: str) -> DataFrame:
        rendered = requests(part, step, call)
        rendered = rendered.select(*columns) if columns else rendered
        return tables.pending(spark, rt, step.table, rendered, step.key)

    # Counted on keys alone, so the rendered prompts of the whole table are never held at once.
    rows_in, attempted = source.count(), pending(source, step.key, "fingerprint").count()
    result = StageResult(rows_in=rows_in, tables=[step.table], metrics={"skipped": rows_in - attempted})
    result.model, result.prompt_version = teacher.model, step.prompt_version
    if attempted == 0:
        return _with_verdict_counts(ctx, step, result)
    if not builtin:
        first = pending(source).limit(1).collect()
        llm.preflight(call, [(str(r[step.key]), json.loads(r.messages)) for r in first])
    totals = LLMTotals()
    parts = tables.chunks(source, step.key, attempted, max(1, cfg.teacher.chunk_rows // step.rows_per_request))
    for number, part in enumerate(parts, start=1):
        label = step.name if len(parts) == 1 else f"{step.name} {number}/{len(parts)}"
        chunk_call = dataclasses.replace(call, label=label)
        todo = pending(part).repartition(cfg.teacher.workers)
        if step.via_ai_query:
            replies = _ai_query(ctx, step, todo, endpoint, chunk_call, builtin)
        else:
            replies = tables.materialize(
                spark,
                rt,
                step.name,
                todo.mapInPandas(
                    functools.partial(_call, call=chunk_call, key=step.key, workers=cfg.teacher.workers),
                    reply_schema(todo),
                ),
            )
        rows = (
            step.rows(replies).withColumn("run_id", F.lit(cfg.run_id)).withColumn("created_at", F.current_timestamp())
        )
        # Staged again: the MERGE reads its source more than once, and the totals too.
        staged = tables.materialize(spark, rt, f"{step.name}_rows", rows)
        tables.upsert(spark, rt, step.table, staged, replace_by=step.replace_by)
        totals.add(staged, group=step.key)
        if step.metrics:
            totals.extra.update(step.metrics(staged))
    llm.clear_journal(journal)
    result.rows_out, result.errors = totals.rows, totals.failed
    result.metrics.update(totals.metrics(teacher))
    check_failure_rate(step.name, totals, attempted, step.settings.max_failure_rate)
    return _with_verdict_counts(ctx, step, result)


def _with_verdict_counts(ctx: RunContext, step: LLMStep, result: StageResult) -> StageResult:
    """A check's result with what its whole verdict table keeps and drops, and why (`kept`, `dropped`)."""
    if step.table.verdict_of:
        result.metrics.update(tables.verdict_counts(tables.read(ctx.spark, ctx.rt, step.table)))
    return result


def _ai_query(
    ctx: RunContext, step: LLMStep, todo: DataFrame, endpoint: llm.Endpoint, call: llm.Call, builtin: bool
) -> DataFrame:
    """The chunk's replies from one ai_query statement, staged once (the statement must run exactly once)."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    teacher = call.teacher  # the stage's endpoint settings
    if not builtin:  # the UDF carries its progress label; registering it again per chunk replaces it
        udf = llm.ai_query_udf(
            endpoint,
            teacher,
            output=step.output,
            journal_dir=call.journal_dir,
            workers=cfg.teacher.workers,
            label=call.label,
        )
        spark.udf.register("ai_query", udf)
    view = f"lakesynth_pending_{uuid.uuid4().hex}"
    todo.createOrReplaceTempView(view)
    carried = [c for c in todo.columns if c not in ("messages", "request")]
    try:
        answered = spark.sql(ai_query_sql(view, carried, endpoint=teacher.model, step=step))
        replies = ai_query_replies(tables.materialize(spark, rt, step.name, answered), model=teacher.model)
    finally:
        spark.catalog.dropTempView(view)
    return replies if builtin else with_journal_accounting(ctx, replies, call.journal_dir)


IMPORTED = "imported"  # the model of a row that came from the user's own pairs (seeds.pairs), not from a call


def imported(ctx: RunContext, table: Table, rows: DataFrame) -> StageResult:
    """Write rows the user brought (`seeds.pairs`) into an LLM stage's table, as if answered by a model named
    `imported`: no call is made, and the checks downstream see them as any other rows."""
    filled = rows.select(
        *rows.columns,
        *[F.lit(None).cast(t).alias(n) for n, t in table.columns if n not in rows.columns and n != "model"],
        F.lit(IMPORTED).alias("model"),
    )
    filled = filled.withColumn("run_id", F.lit(ctx.cfg.run_id)).withColumn("created_at", F.current_timestamp())
    tables.upsert(ctx.spark, ctx.rt, table, filled)
    n = rows.count()
    return StageResult(
        rows_in=n, rows_out=n, tables=[table], metrics={"imported": n, "generation": "skipped: seeds.pairs given"}
    )
