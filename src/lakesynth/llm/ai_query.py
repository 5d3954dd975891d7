"""ai_query for the embedded engine: a pandas UDF registered under that name, as Databricks' built-in is called.

It takes the same arguments as Databricks' `ai_query` and returns the same struct of result + error,
so one SQL text runs on both engines. `reply_columns` reads the built-in's result in every shape it is
documented or was seen in, since runtimes and sources disagree on it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import pandas as pd
from pydantic import BaseModel

from lakesynth.config import TeacherConfig
from lakesynth.errors import ConfigError
from lakesynth.llm.auth import Endpoint
from lakesynth.llm.pool import Call
from lakesynth.llm.schema import response_format

if TYPE_CHECKING:
    from pyspark.sql import Column
    from pyspark.sql.types import StructField

# `failOnError => false` wraps the reply in a struct of two fields, named `result`/`errorMessage` in Databricks'
# reference (and the local UDF), `response`/`error` in guides; `error_message` and `errorStatus` also appear.
ERROR_FIELDS = ("errormessage", "error_message", "errorstatus", "error")
NO_REPLY = "ai_query returned neither a result nor an error"


def ai_query_udf(
    endpoint: Endpoint,
    teacher: TeacherConfig,
    *,
    output: type[BaseModel],
    journal_dir: str | None,
    workers: int,
    label: str = "responses",
):
    """The local `ai_query(endpoint, request, modelParameters => …, responseFormat => …, failOnError => …)`;
    `responseFormat` must be `response_format(output)`."""
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf

    expected = response_format(output)
    result_type = T.StructType([T.StructField("result", T.StringType()), T.StructField("errorMessage", T.StringType())])

    @pandas_udf(result_type)
    def ai_query(
        endpoint_name: pd.Series,
        request: pd.Series,
        modelParameters: pd.DataFrame,
        responseFormat: pd.Series,
        failOnError: pd.Series,
    ) -> pd.DataFrame:
        # All five arguments are required locally: lakesynth's SQL always passes them by name.
        if not len(request):
            return pd.DataFrame({"result": pd.Series([], dtype=object), "errorMessage": pd.Series([], dtype=object)})
        given = str(responseFormat.iloc[0])
        if "".join(given.split()) != "".join(expected.split()):  # compared as text, spaces aside
            raise ConfigError(
                f"ai_query: responseFormat {given!r} does not describe the output model {output.__name__} "
                f"({expected!r}); put llm.response_format({output.__name__}) in the SQL"
            )
        params = modelParameters.iloc[0].to_dict()
        call = Call(
            dataclasses.replace(endpoint, model=str(endpoint_name.iloc[0])),
            teacher,
            output,
            temperature=float(params.get("temperature", 0.0)),
            max_tokens=int(params.get("max_tokens", 1024)),
            journal_dir=journal_dir,
            label=label,
        )
        results = call.run([(str(i), [{"role": "user", "content": r}]) for i, r in enumerate(request)], workers=workers)
        if bool(failOnError.iloc[0]):
            failed = [r.error for r in results if r.error]
            if failed:
                raise RuntimeError(f"ai_query failed: {failed[0]}")
        return pd.DataFrame(
            {
                "result": [json.dumps(r.output, ensure_ascii=False) if r.error is None else None for r in results],
                "errorMessage": [r.error for r in results],
            }
        )

    return ai_query


def reply_columns(response: StructField) -> tuple[Column, Column]:
    """The `ai_query` column (a StructField) as (reply as JSON text, error), for every shape: a struct of result
    and error under any of their names, or the bare result (`failOnError` not applied); the result as JSON text
    (`responseFormat`) or already parsed (a struct, when the runtime types it). A blank error is none, and a
    row with neither a result nor an error gets one, so no row passes as answered without a reply."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    column, dtype = F.col(f"`{response.name}`"), response.dataType
    names = dtype.names if isinstance(dtype, T.StructType) else []
    errors = [n for n in names if n.lower() in ERROR_FIELDS]
    if len(names) == 2 and len(errors) == 1:
        (result,) = [f for f in dtype.fields if f.name != errors[0]]
        value, dtype, error = column.getField(result.name), result.dataType, column.getField(errors[0])
    else:
        value, error = column, F.lit(None).cast("string")
    text = value if isinstance(dtype, T.StringType) else F.to_json(value)
    error = F.when(F.trim(error) != "", error)
    return text, F.coalesce(error, F.when(text.isNull(), F.lit(NO_REPLY)))
