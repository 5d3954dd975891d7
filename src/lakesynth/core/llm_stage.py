"""The one loop every LLM stage runs: a stage supplies two hooks, "rows -> requests" and "replies -> rows".

The loop owns what no stage should repeat: rendering the requests and their fingerprints, what is still to pay for
(`tables.pending`), a one-token preflight, chunks of `llm.chunk_rows`, the calls, staging so no plan calls the
endpoint twice, the MERGE, the totals, clearing the journal and the failure rate. Its guarantees hold for every
stage on it: a failed call is a row with its error, a rerun pays only for what is missing, memory is bounded by a
chunk.

Where the calls are made (`route`), since Databricks serverless lets no UDF reach the network:
- `ai_query`: one `ai_query` SQL statement per chunk. On Databricks, for a workspace endpoint (`base_url:
  databricks`), the built-in (batch inference the platform runs; a crash costs the chunk's statement). Locally the
  same SQL text runs against lakesynth's own `ai_query` UDF, journaled (a crash costs the requests in flight).
- `driver`: on Databricks, an endpoint outside the workspace (a URL) is called from the task's driver process, a
  chunk at a time, journaled on the Volume (a crash costs the requests in flight).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth import llm
from lakesynth.config import EndpointSettings, LLMStageConfig
from lakesynth.core import budget, tables
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import RunContext, StageResult
from lakesynth.core.tables import S, Table
from lakesynth.core.templates import prompt_version
from lakesynth.errors import EndpointError, StageError
from lakesynth.llm import ai_query, progress
from lakesynth.llm.retry import THROTTLED, UNFINISHED
from lakesynth.llm.throttle import concurrency_trace, reset_concurrency

# What the loop adds to a request's columns once it is answered; a stage's `rows` hook reads `output`
# (the reply as JSON text, valid against the stage's output model) or `error`.
REPLY_FIELDS = [("model", S), ("output", S), *tables.LLM_RESULT]
ACCOUNTING = ("prompt_tokens", "completion_tokens", "latency_ms", "attempts")

BUILTIN, LOCAL, DRIVER = "ai_query", "local ai_query", "driver"
TOKENS_FROM = {
    LOCAL: "endpoint replies (the local ai_query's journal)",
    DRIVER: "endpoint replies",
}


def route(rt: Runtime, teacher: EndpointSettings) -> str:
    """How `teacher`'s requests are sent from Spark: BUILTIN (Databricks' ai_query; when emulating serverless, its
    local stand-in), DRIVER (serverless, an endpoint outside the workspace) or LOCAL (lakesynth's ai_query UDF)."""
    if not rt.serverless:
        return LOCAL
    return BUILTIN if teacher.base_url == "databricks" else DRIVER


@dataclass(frozen=True)
class LLMStep:
    """What an LLM stage supplies to the loop.

    Args:
        prompts: rows -> requests. Given a pandas batch of `columns`, the chat messages of each row (sent as one
            string: `ai_query.flatten`). Pure and picklable (a module-level function, parameters bound with
            functools.partial): it runs in a UDF, which never reaches the network.
        rows: replies -> rows. Given the replies (the request columns, `prompt_version`, `fingerprint` and
            REPLY_FIELDS), the rows of `table`; the write adds `run_id` and `created_at`.
        rows_per_request: rows a request writes, so a chunk holds about `llm.chunk_rows` written rows.
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
    return T.StructType(carried + [T.StructField(n, S) for n in ("request", "prompt_version", "fingerprint")])


def requests(source: DataFrame, step: LLMStep, call: llm.Call) -> DataFrame:
    """One row per source row with its `request` (the messages as one string), prompt version and fingerprint."""
    return source.select(*step.columns).mapInPandas(
        functools.partial(_render, prompts=step.prompts, call=call, version=step.prompt_version),
        request_schema(source, step),
    )


def _render(batches: Iterator[pd.DataFrame], *, prompts, call: llm.Call, version: str) -> Iterator[pd.DataFrame]:
    for batch in batches:
        texts = [ai_query.flatten(m) for m in prompts(batch)]
        yield batch.assign(
            request=texts,
            prompt_version=version,
            fingerprint=[call.fingerprint([{"role": "user", "content": t}]) for t in texts],
        )


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
    kept = [f for f in requests_df.schema.fields if f.name != "request"]
    return T.StructType(kept + [T.StructField(n, t) for n, t in REPLY_FIELDS])


def parsed(replies: DataFrame, output: type[BaseModel]) -> F.Column:
    """The reply as a struct of the output model's fields (null where the request failed)."""
    return F.from_json(F.col("output"), llm.spark_ddl(output))


def ai_query_replies(answered: DataFrame, *, model: str) -> DataFrame:
    """The `ai_query` result as REPLY_FIELDS, in whichever shape the runtime returns it (the built-in, its
    documentation and its versions disagree: llm.ai_query.reply_columns reads them all)."""
    result, error = ai_query.reply_columns(answered.schema["response"])
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
    throttled: int = 0  # of `failed`: rows the endpoint still throttled after the throttle budget and patience
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    errors: list[str] = field(default_factory=list)
    extra: collections.Counter = field(default_factory=collections.Counter)

    def add(self, rows: DataFrame, *, group: str) -> tuple[int, int, int, int]:
        """Fold in a chunk's rows; its requests (one per `group`), prompt and completion tokens and latency."""
        agg = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(group).alias("requests"),
            F.countDistinct(F.when(F.col("error").isNotNull(), F.col(group))).alias("failed"),
            F.countDistinct(F.when(F.col("error").startswith(THROTTLED), F.col(group))).alias("throttled"),
            F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("prompt_tokens"),
            F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("completion_tokens"),
            F.coalesce(F.sum("latency_ms"), F.lit(0)).alias("latency_ms"),
        ).collect()[0]
        self.rows += agg.rows
        self.failed += agg.failed
        self.throttled += agg.throttled
        self.prompt_tokens += int(agg.prompt_tokens)
        self.completion_tokens += int(agg.completion_tokens)
        self.latency_ms += int(agg.latency_ms)
        if agg.failed and len(self.errors) < 3:
            self.errors += [r.error for r in rows.where("error IS NOT NULL").select("error").limit(3).collect()]
        return agg.requests, int(agg.prompt_tokens), int(agg.completion_tokens), int(agg.latency_ms)

    def metrics(self, teacher: EndpointSettings) -> dict[str, Any]:
        metrics: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        cost = teacher.cost(self.prompt_tokens, self.completion_tokens)
        if cost is not None:
            metrics["cost_usd"] = round(cost, 4)
        return {**metrics, **self.extra}


def check_failure_rate(stage: str, totals: LLMTotals, rows: int, limit: float) -> None:
    """Fail the stage (its rows are already written, errors included) when too many of its `rows` failed: those not
    asked this time had succeeded before, so a rerun that asks one row again fails only if its share is too high.
    Rows the endpoint throttled do not count: an endpoint's limits say nothing of the stage's requests, and a rerun
    asks them again."""
    failed = totals.failed - totals.throttled
    if rows and failed / rows > limit:
        raise StageError(
            f"{stage}: {failed} of {rows} rows failed (max_failure_rate {limit:.0%}); "
            f"rows and errors are written, a rerun retries only the failed ones. First errors:\n  "
            + "\n  ".join(totals.errors[:3])
        )


def run(ctx: RunContext, step: LLMStep, source: DataFrame) -> StageResult:
    """Call the teacher for every row of `source` that `step.table` lacks a successful row for, chunk by chunk."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    teacher = step.settings.calls_with(cfg)  # the endpoint the stage names (default: the teacher)
    via = route(rt, teacher)
    call = llm.Call(
        _endpoint(ctx, teacher, via),
        teacher,
        step.output,
        step.settings.temperature,
        step.settings.max_tokens,
        journal_dir=None if via == BUILTIN else rt.journal_dir(step.name),
        label=step.name,
        json_schema=step.json_schema,
        fingerprint_extra=step.fingerprint_extra,
        reply_cap=ctx.reply_caps.get(step.table.name),
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
    result.metrics["calls"] = via
    spend = budget.of(ctx)
    if spend.stopped:  # an earlier stage spent the budget: not even the preflight goes
        result.metrics.update(budget="stopped", not_requested=attempted)
        spend.usage(step.name, teacher).not_requested += attempted
        _hold_back(ctx, step, teacher, pending(source), spend)
        return _with_verdict_counts(ctx, step, result)
    if via != BUILTIN or rt.serving:  # the platform's own batch inference is not ours to probe
        first = pending(source, step.key, "request", "fingerprint").limit(1).collect()
        llm.preflight(call, [(str(r[step.key]), [{"role": "user", "content": r.request}]) for r in first])
    totals, started = LLMTotals(), time.time()
    reset_concurrency(call.endpoint)  # the stage's own course of the endpoint's limit, in its summary
    parts = tables.chunks(source, step.key, attempted, max(1, cfg.llm.chunk_rows // step.rows_per_request))
    sent = 0
    guess = spend.estimates.get(step.name) or {}  # the saved estimate's figures for this stage, if any
    per_request_s = guess["wall_s"] / guess["requests"] if guess.get("requests") else None
    with progress.stage(step.name, attempted, interval=cfg.llm.progress_s, estimate_s=per_request_s) as lines:
        requested = 0
        for number, part in enumerate(parts, start=1):
            chunk_call = dataclasses.replace(
                call, label=step.name if len(parts) == 1 else f"{step.name} {number}/{len(parts)}"
            )
            todo = pending(part)
            requests_in_chunk, predicted = None, None
            if spend.capped:
                todo, requests_in_chunk, predicted = _within_budget(spend, step, teacher, todo, result)
                if not requests_in_chunk:
                    _hold_back(ctx, step, teacher, pending(part), spend)
                    continue
            if via == DRIVER:
                replies = _from_driver(ctx, step, todo, chunk_call)
            else:
                replies = _from_ai_query(ctx, step, todo.repartition(cfg.llm.partitions), chunk_call, via)
            # Staged again: the MERGE reads its source more than once, and the totals too.
            staged = tables.materialize(spark, rt, f"{step.name}_rows", step.rows(replies))
            tables.upsert(spark, rt, step.table, staged, run_id=cfg.run_id, replace_by=step.replace_by)
            requests_sent, prompt_tokens, completion_tokens, latency_ms = totals.add(staged, group=step.key)
            if call.reply_cap:  # a first look's cut replies: the preview's own cost, no measure of the run's
                cut = LLMTotals().add(staged.where(F.col("error").startswith(UNFINISHED)), group=step.key)
                requests_sent, prompt_tokens, completion_tokens, latency_ms = (
                    a - b for a, b in zip((requests_sent, prompt_tokens, completion_tokens, latency_ms), cut)
                )
                result.metrics["first_look_cut"] = result.metrics.get("first_look_cut", 0) + cut[0]
            if step.metrics:
                totals.extra.update(step.metrics(staged))
            if lines and rt.databricks:  # the requests ran on the executors: the line counts merged chunks
                requested += replies.count()  # staged: one row per request
                lines.reached(requested)
            sent += requests_in_chunk if requests_in_chunk is not None else requests_sent
            if via == BUILTIN and predicted is not None:  # the built-in (or its stand-in) reports no tokens per row
                prompt_tokens, completion_tokens = round(predicted.tokens * requests_sent), 0
                result.metrics["budget_from"] = budget.FROM_ESTIMATE
            spend.record(
                step.name,
                teacher,
                requests=requests_sent,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
            )
            if spend.stopped:  # what the cap cut from this chunk
                _hold_back(ctx, step, teacher, pending(part), spend)
    if spend.capped and sent < attempted:
        result.metrics["budget"] = "stopped"  # not `stopped`: the runner's word for a stage its dependency stopped
        result.metrics["not_requested"] = attempted - sent
        spend.usage(step.name, teacher).not_requested += attempted - sent
    if call.journal_dir:
        llm.clear_journal(call.journal_dir)
    result.rows_out, result.errors = totals.rows, totals.failed
    if totals.throttled:
        result.metrics["throttled_rows"] = totals.throttled
    trace = concurrency_trace(call.endpoint)  # None for the built-in: the platform paces its own calls
    if trace:
        result.metrics["concurrency"] = trace
    if via == BUILTIN and not rt.serving:
        usage, result.metrics["tokens_from"] = ai_query.platform_usage(spark, teacher.model, started, time.time())
        if usage:
            totals.prompt_tokens, totals.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    else:
        result.metrics["tokens_from"] = TOKENS_FROM.get(via, "not reported: the built-in ai_query's stand-in")
    result.metrics.update(totals.metrics(teacher))
    if not call.reply_cap:  # a first look's cut replies are asked in full later, and checked then
        check_failure_rate(step.name, totals, rows_in, step.settings.max_failure_rate)
    return _with_verdict_counts(ctx, step, result)


def _within_budget(
    spend: budget.Budget, step: LLMStep, teacher: EndpointSettings, todo: DataFrame, result: StageResult
) -> tuple[DataFrame, int, budget.PerRequest]:
    """The chunk's pending requests cut to what the budget still admits (in key order), their number, and the
    predicted cost of one."""
    stats = todo.agg(F.count(F.lit(1)).alias("n"), F.avg(F.length("request")).alias("chars")).collect()[0]
    cost, source = spend.per_request(
        step.name, teacher, prompt_chars=stats.chars or 0.0, max_tokens=step.settings.max_tokens
    )
    result.metrics.setdefault("budget_predicted_from", source)
    allowed = spend.admit(stats.n, cost)
    if allowed < stats.n:
        todo = todo.orderBy(step.key).limit(allowed)
    return todo, allowed, cost


def _hold_back(ctx: RunContext, step: LLMStep, teacher: EndpointSettings, held: DataFrame, spend) -> None:
    """A row for each request the budget held back, with its error (`budget: ...`), through the stage's own `rows`:
    a check that did not judge a row drops it as it drops a failed reply (`judge_error` ...), so nothing unchecked
    goes on to the training data, and a rerun sends it (an error row is still pending)."""
    error = f"{budget.HELD}not requested: {spend.describe()}; a rerun with a higher cap sends it"
    values = {"model": F.lit(teacher.model), "error": F.lit(error)}
    replies = held.drop("request").select("*", *[values.get(n, F.lit(None)).cast(t).alias(n) for n, t in REPLY_FIELDS])
    staged = tables.materialize(ctx.spark, ctx.rt, f"{step.name}_held", step.rows(replies))
    tables.upsert(ctx.spark, ctx.rt, step.table, staged, run_id=ctx.cfg.run_id, replace_by=step.replace_by)


def _endpoint(ctx: RunContext, teacher: EndpointSettings, via: str) -> llm.Endpoint:
    """Where the requests go: the built-in's endpoint for BUILTIN, else the configured one, opened once per run."""
    return _builtin(ctx.rt, teacher.model) if via == BUILTIN else llm.endpoint(ctx, teacher)


def _builtin(rt: Runtime, model: str) -> llm.Endpoint:
    """The endpoint the built-in ai_query calls: the platform's, by name (locally, emulating serverless, the stand-in
    of the workspace's Model Serving)."""
    return llm.Endpoint(rt.serving or "databricks", model)


def _statement(ctx: RunContext, rows: DataFrame, name: str, sql: Callable[[str], str]) -> DataFrame:
    """`sql(view)` over a view of `rows`, staged as `name`: the statement calls an endpoint, so it must run exactly
    once, whatever reads its result after."""
    view = f"lakesynth_pending_{uuid.uuid4().hex}"
    rows.createOrReplaceTempView(view)
    try:
        return tables.materialize(ctx.spark, ctx.rt, name, ctx.spark.sql(sql(view)))
    finally:
        ctx.spark.catalog.dropTempView(view)


def _with_verdict_counts(ctx: RunContext, step: LLMStep, result: StageResult) -> StageResult:
    """A check's result with what its whole verdict table keeps and drops, and why (`kept`, `dropped`)."""
    if step.table.verdict_of:
        result.metrics.update(tables.verdict_counts(tables.read(ctx.spark, ctx.rt, step.table)))
    return result


def _from_ai_query(ctx: RunContext, step: LLMStep, todo: DataFrame, call: llm.Call, via: str) -> DataFrame:
    """The chunk's replies from one ai_query statement, staged once (the statement must run exactly once)."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    if not rt.databricks:  # registered again per chunk: the UDF carries the chunk's progress label
        spark.udf.register("ai_query", llm.ai_query_udf(call, workers=cfg.llm.partitions))
    carried = [c for c in todo.columns if c != "request"]
    model = call.endpoint.model
    answered = _statement(
        ctx, todo, step.name, lambda view: ai_query.chat_sql(view, carried, endpoint=model, call=call)
    )
    replies = ai_query_replies(answered, model=model)
    if via == BUILTIN:  # the local UDF validated each reply in the pool; the platform's did not
        replies = ai_query.validated(replies, step.output)
    return with_journal_accounting(ctx, replies, call.journal_dir) if call.journal_dir else replies


def _from_driver(ctx: RunContext, step: LLMStep, todo: DataFrame, call: llm.Call) -> DataFrame:
    """The chunk's replies, its requests sent from this (the driver) process: at most `llm.chunk_rows` of them
    are held here at once, and each finished one is journaled, so a crash costs only the requests in flight."""
    spark, rt = ctx.spark, ctx.rt
    batch = todo.toPandas()
    results = call.run([(str(k), [{"role": "user", "content": r}]) for k, r in zip(batch[step.key], batch["request"])])
    frame = replies_frame(batch.drop(columns=["request"]), results)
    return tables.materialize(spark, rt, step.name, spark.createDataFrame(frame, schema=reply_schema(todo)))


def embed(
    ctx: RunContext, rows: DataFrame, *, teacher: EndpointSettings, batch: int, name: str, per_row: bool = False
) -> DataFrame:
    """`rows` (with a `text` column) with `vector`, the unit embedding of its text, staged. The same routes as the
    chat requests (`route`): one `ai_query` statement (the built-in on Databricks, lakesynth's UDF here), or the
    driver for an endpoint outside the workspace. A text that could not be embedded fails the stage, naming the
    first error, or with `per_row` is its row's `embed_error` (its vector null): a check that scores replies it
    has just paid for keeps them, and the rows say why they have no score."""
    spark, rt = ctx.spark, ctx.rt
    via = route(rt, teacher)
    if via == DRIVER:
        frame, errors = rows.toPandas(), None
        try:
            with llm.open_endpoint(teacher, embeddings=True) as endpoint:
                texts = [str(t) for t in frame["text"]]
                vectors = (
                    [np.asarray(v, dtype=np.float32).tolist() for v in llm.embed(endpoint, teacher, texts, batch=batch)]
                    if len(frame)
                    else []
                )
        except EndpointError as exc:
            if not per_row:
                raise
            vectors, errors = [None] * len(frame), [str(exc)] * len(frame)
        schema = T.StructType(rows.schema.fields + [T.StructField("response", ai_query.vector_reply_type())])
        frame = frame.assign(
            response=[{"result": v, "errorMessage": e} for v, e in zip(vectors, errors or [None] * len(frame))]
        )
        staged = tables.materialize(spark, rt, f"{name}_vectors", spark.createDataFrame(frame, schema=schema))
    else:

        def sql(view: str) -> str:
            return ai_query.embeddings_sql(view, rows.columns, endpoint=teacher.model)

        if via == BUILTIN and rt.databricks:
            staged = _statement(ctx, rows, f"{name}_vectors", sql)
        else:
            opened = (
                llm.open_endpoint(teacher, embeddings=True)
                if via == LOCAL
                else contextlib.nullcontext(_builtin(rt, teacher.model))
            )
            with opened as endpoint:  # the embedded model lives while the statement runs
                spark.udf.register("ai_query", ai_query.embeddings_udf(endpoint, teacher, batch=batch))
                staged = _statement(ctx, rows, f"{name}_vectors", sql)
    vector, error = ai_query.vector_columns(staged.schema["response"])
    if not per_row:
        failed = staged.where(error.isNotNull()).select(error.alias("e")).limit(1).collect()
        if failed:
            raise EndpointError(f"{name}: embeddings from '{teacher.model}' failed: {failed[0].e}")
    norm = F.sqrt(F.aggregate(vector, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    unit = F.transform(vector, lambda x: (x / F.greatest(norm, F.lit(1e-12))).cast("float"))
    extra = [F.when(error.isNotNull(), F.concat(F.lit("embeddings: "), error)).alias("embed_error")] if per_row else []
    return staged.select(*rows.columns, F.when(error.isNull(), unit).alias("vector"), *extra)


def mean_cosines(vectors: DataFrame, key: str) -> DataFrame:
    """One row per `key` with `score`, the mean cosine of its text number 0 (the original) with its others (the
    reverse questions), from `embed(per_row=True)`'s unit vectors with an `i` column; and `embed_error`, the first
    of its texts' embedding errors (its score then null)."""

    def score(group: pd.DataFrame) -> pd.DataFrame:
        ordered = group.sort_values("i")
        failed = ordered["embed_error"].dropna()
        value = None
        if failed.empty and len(ordered) > 1:
            matrix = np.stack(ordered["vector"].to_numpy()).astype(np.float32)
            value = float((matrix[1:] @ matrix[0]).mean())
        error = failed.iloc[0] if not failed.empty else None
        return pd.DataFrame({key: [ordered[key].iloc[0]], "score": [value], "embed_error": [error]})

    return vectors.groupBy(key).applyInPandas(score, f"{key} string, score double, embed_error string")


IMPORTED = "imported"  # the model of a row that came from the user's own pairs (seed.pairs), not from a call


def imported(ctx: RunContext, table: Table, rows: DataFrame) -> StageResult:
    """Write rows the user brought (`seed.pairs`) into an LLM stage's table, as if answered by a model named
    `imported`: no call is made, and the checks downstream see them as any other rows."""
    filled = rows.select(
        *rows.columns,
        *[
            F.lit(None).cast(t).alias(n)
            for n, t in table.columns
            if n not in (*rows.columns, *tables.LINEAGE_NAMES, "model")
        ],
        F.lit(IMPORTED).alias("model"),
    )
    tables.upsert(ctx.spark, ctx.rt, table, filled, run_id=ctx.cfg.run_id)
    n = rows.count()
    return StageResult(
        rows_in=n, rows_out=n, tables=[table], metrics={"imported": n, "generation": "skipped: seed.pairs given"}
    )
