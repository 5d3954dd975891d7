"""The LLM layer: every call to a teacher goes through here (the only HTTP call and the only ai_query).

Order of work for one request (after curator): fingerprint -> journal hit? -> call -> parse into the
output model -> retry -> record. Every failure of one request stays in its row: 408, 409, 429, 5xx,
timeouts, dropped connections and invalid or truncated output are retried with jittered backoff
(honouring Retry-After up to a cap), then become the row's `error`, with the raw reply kept; other
4xx replies (400, 413, 422, ...) become the row's error at once. Only what no row could survive
raises EndpointError: 401 (for Databricks, after renewing the token once), 403, 404, an endpoint never
reached, and a 400 on the preflight unless its error code names a fault of that row (see `retry.py` for
the one table that decides).

Each finished request goes to a journal (JSON lines keyed by its fingerprint, buffered and written as
write-once files, as Volumes need) before the stage writes its table. A stage killed halfway and rerun
finds the journal and pays again only for the requests in flight and the last `llm.journal_flush_s`
of results.

    auth.py      Endpoint, Auth, open_endpoint (the embedded teacher, Databricks Model Serving, any URL), and
                 endpoint (opened once per run, through ctx.shared)
    journal.py   Result, Journal, clear_journal
    call.py      Call (how a stage asks: endpoint, output model, parameters), preflight
    pool.py      the pool of requests that runs a Call, shared rate limits
    retry.py     what becomes of a failed request: retried, the row's error, or fatal; the backoff
    throttle.py  adaptive concurrency (AIMD on 429s), per endpoint and process; concurrency_trace
    ai_query.py  the ai_query statements (chat, embeddings), their local stand-in UDFs, reading their result
    embeddings.py  texts -> unit vectors from an OpenAI-compatible /embeddings endpoint
    schema.py    Spark DDL derived from a pydantic output model
"""

from lakesynth.llm.ai_query import ai_query_udf
from lakesynth.llm.auth import Endpoint, endpoint, open_endpoint
from lakesynth.llm.call import Call, preflight
from lakesynth.llm.embeddings import embed
from lakesynth.llm.journal import Journal, Result, clear_journal
from lakesynth.llm.retry import RETRYABLE, InvalidOutput
from lakesynth.llm.schema import response_format, spark_ddl
from lakesynth.llm.throttle import concurrency_trace, reset_concurrency

__all__ = [
    "RETRYABLE",
    "Call",
    "Endpoint",
    "InvalidOutput",
    "Journal",
    "Result",
    "ai_query_udf",
    "clear_journal",
    "concurrency_trace",
    "embed",
    "endpoint",
    "open_endpoint",
    "preflight",
    "reset_concurrency",
    "response_format",
    "spark_ddl",
]
