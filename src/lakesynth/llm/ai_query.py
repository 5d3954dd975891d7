"""ai_query: the statement every model call from Spark is, the local stand-in of Databricks' built-in, and what
its replies need (a check against the output model; tokens from the platform's usage table).

On Databricks, serverless compute lets no UDF reach the network, so a chunk of requests is one SQL statement
calling the built-in `ai_query` (batch inference the platform runs). Locally the same SQL text runs against a
pandas UDF registered under that name, which calls the endpoint through the pool (`Call.run`). `reply_columns`
reads the built-in's result in every shape it is documented or was seen in, ANSI-safe, since runtimes and sources
disagree on it.

The request is one string: foundation-model and external-model endpoints take no message list through
`ai_query`, so a system message is flattened into the text (`flatten`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lakesynth.config import EndpointSettings
from lakesynth.errors import ConfigError
from lakesynth.llm import serverless
from lakesynth.llm.auth import Endpoint
from lakesynth.llm.call import Call, validate_output
from lakesynth.llm.retry import InvalidOutput
from lakesynth.llm.schema import response_format

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import StructField

# `failOnError => false` wraps the reply in a struct of two fields, named `result`/`errorMessage` in Databricks'
# reference (and the local UDF), `response`/`error` in guides; `error_message` and `errorStatus` also appear.
ERROR_FIELDS = ("errormessage", "error_message", "errorstatus", "error")
NO_REPLY = "ai_query returned neither a result nor an error"

CHAT_SQL = """SELECT {columns},
  ai_query(
    '{endpoint}',
    request,
    modelParameters => named_struct('max_tokens', {max_tokens}, 'temperature', {temperature}),
    responseFormat => '{response_format}',
    failOnError => false
  ) AS response
FROM {source}"""

EMBEDDINGS_SQL = """SELECT {columns},
  ai_query('{endpoint}', text, failOnError => false) AS response
FROM {source}"""


def literal(text: str) -> str:
    """`text` inside a single-quoted Spark SQL string literal."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def flatten(messages: list[dict]) -> str:
    """The chat messages as the one request string `ai_query` sends: the texts in order, a blank line apart (the
    system text first, as the instructions before the question); a single user message is sent as it is."""
    return "\n\n".join(str(m.get("content") or "") for m in messages)


def request_format(call: Call) -> str:
    """The `responseFormat` for the call's output: the output model as a DDL struct (Databricks' documented form),
    or, when the call asks for a narrower JSON Schema than its model (the generated calls), that schema as
    OpenAI's `response_format` JSON."""
    if call.json_schema is not None:
        return json.dumps(call.response_format, sort_keys=True, separators=(",", ":"))
    return response_format(call.output)


def chat_sql(source: str, columns: list[str], *, endpoint: str, call: Call) -> str:
    """The batch-inference statement over a view of pending requests; the same text on both engines."""
    return CHAT_SQL.format(
        columns=", ".join(f"`{c}`" for c in columns),
        endpoint=literal(endpoint),
        max_tokens=int(call.max_tokens),
        temperature=float(call.temperature),
        response_format=literal(request_format(call)),
        source=source,
    )


def embeddings_sql(source: str, columns: list[str], *, endpoint: str) -> str:
    """One embedding per row of `text` (an embeddings endpoint answers `ai_query` with ARRAY<FLOAT>)."""
    return EMBEDDINGS_SQL.format(
        columns=", ".join(f"`{c}`" for c in columns), endpoint=literal(endpoint), source=source
    )


def reply_type(result):
    """The struct `ai_query(..., failOnError => false)` returns: the result (of Spark type `result`) and its error."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField("result", result), T.StructField("errorMessage", T.StringType())])


def vector_reply_type():
    """An embeddings endpoint's `reply_type`: ARRAY<FLOAT> and its error."""
    from pyspark.sql import types as T

    return reply_type(T.ArrayType(T.FloatType()))


def _no_rows() -> pd.DataFrame:
    """A UDF's answer to an empty batch: no result, no error."""
    return pd.DataFrame({"result": pd.Series([], dtype=object), "errorMessage": pd.Series([], dtype=object)})


def ai_query_udf(call: Call, *, workers: int):
    """The local `ai_query(endpoint, request, modelParameters => …, responseFormat => …, failOnError => …)` for
    `call`'s requests; `responseFormat` must be `request_format(call)`. It stands in for the built-in, so it is the
    one UDF that may call an endpoint (serverless.py)."""
    from pyspark.sql.functions import pandas_udf

    expected = request_format(call)

    def ai_query(
        endpoint_name: pd.Series,
        request: pd.Series,
        modelParameters: pd.DataFrame,
        responseFormat: pd.Series,
        failOnError: pd.Series,
    ) -> pd.DataFrame:
        # All five arguments are required locally: lakesynth's SQL always passes them by name.
        if not len(request):
            return _no_rows()
        given = str(responseFormat.iloc[0])
        if "".join(given.split()) != "".join(expected.split()):  # compared as text, spaces aside
            raise ConfigError(
                f"ai_query: responseFormat {given!r} does not describe the output of {call.label} ({expected!r}); "
                "build the SQL with llm.ai_query.chat_sql"
            )
        params = modelParameters.iloc[0].to_dict()
        asked = dataclasses.replace(
            call,
            endpoint=dataclasses.replace(call.endpoint, model=str(endpoint_name.iloc[0])),
            temperature=float(params.get("temperature", call.temperature)),
            max_tokens=int(params.get("max_tokens", call.max_tokens)),
        )
        results = asked.run(
            [(str(i), [{"role": "user", "content": r}]) for i, r in enumerate(request)], workers=workers
        )
        if bool(failOnError.iloc[0]):
            failed = [r.error for r in results if r.error]
            if failed:
                raise RuntimeError(f"ai_query failed: {failed[0]}")
        return pd.DataFrame(
            {
                # A failed request's raw reply rides in `result` beside its error, as `reply_columns` reads it.
                "result": [
                    json.dumps(r.output, ensure_ascii=False) if r.error is None else r.raw_output for r in results
                ],
                "errorMessage": [r.error for r in results],
            }
        )

    from pyspark.sql import types as T

    serverless.allow(ai_query)
    return pandas_udf(reply_type(T.StringType()))(ai_query)


def embeddings_udf(endpoint: Endpoint, teacher: EndpointSettings, *, batch: int):
    """The local `ai_query(endpoint, text, failOnError => …)` of an embeddings endpoint: ARRAY<FLOAT> per text, or
    the row's error."""
    from pyspark.sql.functions import pandas_udf

    from lakesynth.errors import EndpointError
    from lakesynth.llm.embeddings import embed

    def ai_query(endpoint_name: pd.Series, text: pd.Series, failOnError: pd.Series) -> pd.DataFrame:
        if not len(text):
            return _no_rows()
        target = dataclasses.replace(endpoint, model=str(endpoint_name.iloc[0]))
        try:
            vectors: list = [
                np.asarray(v, dtype=np.float32).tolist() for v in embed(target, teacher, list(text), batch=batch)
            ]
            errors: list = [None] * len(text)
        except EndpointError as exc:
            if bool(failOnError.iloc[0]):
                raise
            vectors, errors = [None] * len(text), [str(exc)] * len(text)
        return pd.DataFrame({"result": vectors, "errorMessage": errors})

    serverless.allow(ai_query)
    return pandas_udf(vector_reply_type())(ai_query)


def reply_columns(response: StructField) -> tuple[Column, Column]:
    """The `ai_query` column (a StructField) as (reply as JSON text, error), for every shape: a struct of result
    and error under any of their names, or the bare result (`failOnError` not applied); the result as JSON text
    (`responseFormat`) or already parsed (a struct, when the runtime types it). A blank error is none, and a row
    with neither a result nor an error gets one, so no row passes as answered without a reply."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    value, dtype, error = _result_and_error(response)
    text = value if isinstance(dtype, T.StringType) else F.to_json(value)
    return text, F.coalesce(error, F.when(text.isNull(), F.lit(NO_REPLY)))


def vector_columns(response: StructField) -> tuple[Column, Column]:
    """An embeddings `ai_query` column as (ARRAY<FLOAT>, error), as `reply_columns` reads a chat one."""
    from pyspark.sql import functions as F

    value, _, error = _result_and_error(response)
    value = value.cast("array<float>")
    return value, F.coalesce(error, F.when(value.isNull(), F.lit(NO_REPLY)))


def _result_and_error(response: StructField) -> tuple[Column, object, Column]:
    """The result (and its type) and the error (text, null where blank) of an `ai_query` column. The error may be a
    string, a struct, a number or null: it is made text by its type before it is trimmed, so the parse holds under
    ANSI mode (serverless' default)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    column, dtype = F.col(f"`{response.name}`"), response.dataType
    names = dtype.names if isinstance(dtype, T.StructType) else []
    errors = [n for n in names if n.lower() in ERROR_FIELDS]
    if len(names) != 2 or len(errors) != 1:
        return column, dtype, F.lit(None).cast("string")
    (result,) = [f for f in dtype.fields if f.name != errors[0]]
    (failure,) = [f for f in dtype.fields if f.name == errors[0]]
    error = _as_text(column.getField(failure.name), failure.dataType)
    return column.getField(result.name), result.dataType, F.when(F.trim(error) != "", error)


def _as_text(error: Column, dtype) -> Column:
    """An error field of any type as text (null stays null): a struct or array as its JSON, a number as its digits."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if isinstance(dtype, T.StringType):
        return error
    if isinstance(dtype, T.NullType):
        return F.lit(None).cast("string")
    if isinstance(dtype, T.StructType | T.ArrayType | T.MapType):
        return F.to_json(error)
    return error.cast("string")


def validated(replies: DataFrame, output: type[BaseModel]) -> DataFrame:
    """The built-in's replies checked against the output model, as the pool checks its own: one that does not match
    becomes its row's error (InvalidOutput, the text kept as `raw_output`), so it is never read as an answer and is
    asked again on the next run. No network: a UDF may do it on serverless."""
    return replies.mapInPandas(functools.partial(_validate, output=output), replies.schema)


def _validate(batches: Iterator[pd.DataFrame], *, output: type[BaseModel]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        texts, errors, raws = list(batch["output"]), list(batch["error"]), list(batch["raw_output"])
        for i, text in enumerate(texts):
            if text is None or errors[i] is not None:
                continue
            try:
                texts[i] = json.dumps(validate_output(output, text), ensure_ascii=False)
            except InvalidOutput as exc:
                errors[i], texts[i], raws[i] = f"InvalidOutput: {exc}", None, text
        yield batch.assign(output=texts, error=errors, raw_output=raws)


USAGE_SQL = """SELECT COALESCE(SUM(u.input_token_count), 0) AS prompt_tokens,
  COALESCE(SUM(u.output_token_count), 0) AS completion_tokens, COUNT(*) AS requests
FROM system.serving.endpoint_usage u
JOIN system.serving.served_entities e ON u.served_entity_id = e.served_entity_id
WHERE e.endpoint_name = '{endpoint}' AND u.requester = current_user()
  AND u.request_time BETWEEN timestamp_seconds({since}) AND timestamp_seconds({until})"""


def platform_usage(spark, endpoint: str, since: float, until: float) -> tuple[dict[str, int] | None, str]:
    """Tokens the built-in ai_query spent on `endpoint` between `since` and `until` (epoch seconds, so no session
    time zone shifts the window), from the platform's serving usage system table (`ai_query` reports none per row),
    and where the figures come from. Best-effort: the table needs usage tracking on the endpoint and SELECT on
    `system.serving`, it lags behind the calls, and it cannot tell this stage's requests from those another task
    of this identity sent to the same endpoint meanwhile (the Q&A job's two branches run at once)."""
    try:
        sql = USAGE_SQL.format(endpoint=literal(endpoint), since=int(since), until=int(until) + 1)
        row = spark.sql(sql).collect()[0]
    except Exception as exc:  # noqa: BLE001 - any engine error means the same: the table cannot be read
        first = (str(exc).splitlines() or [""])[0][:160]
        return None, (
            "not reported: ai_query gives no tokens per row, and system.serving.endpoint_usage could not be read "
            f"({type(exc).__name__}: {first})"
        )
    source = (
        "system.serving.endpoint_usage (this identity's requests to the endpoint while the stage ran, any other task's "
        "at the same time included; it may lag)"
    )
    return {"prompt_tokens": int(row.prompt_tokens), "completion_tokens": int(row.completion_tokens)}, source
