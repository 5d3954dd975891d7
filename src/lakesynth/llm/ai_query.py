"""ai_query for the embedded engine: a pandas UDF registered under that name, as Databricks' built-in is called.

It takes the same arguments as Databricks' `ai_query` and returns the same struct of result + error,
so one SQL text runs on both engines.
"""

from __future__ import annotations

import json

import pandas as pd
from pydantic import BaseModel

from lakesynth.config import TeacherConfig
from lakesynth.errors import ConfigError
from lakesynth.llm.auth import Endpoint
from lakesynth.llm.pool import Call
from lakesynth.llm.schema import response_format


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
            Endpoint(endpoint.base_url, str(endpoint_name.iloc[0]), endpoint.api_key),
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
