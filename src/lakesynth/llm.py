"""The LLM layer: every call to a teacher goes through here.

Order of work for one request (after curator): fingerprint -> journal hit? -> call -> parse into
the response model -> retry -> record. Schema-invalid or truncated output, 429s, 5xx and
timeouts are retried with exponential backoff and jitter (honouring Retry-After); when retries
run out the failure becomes data (the row's `error`, with the raw text kept), never an exception.
Only endpoint-level failures (bad key, unknown model, rejected schema, unreachable host) raise
EndpointError, because no row could succeed.

Each finished request is appended to a journal (JSON lines, one file per worker) keyed by its
fingerprint, before the stage writes its table. A stage killed halfway and rerun finds the
journal and pays again only for the requests that were in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import random
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import openai
import pandas as pd
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, create_model
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tqdm import tqdm

from lakesynth.config import TeacherConfig
from lakesynth.errors import ConfigError, EndpointError


class InvalidOutput(Exception):
    """The reply was not valid JSON, broke the schema, or was cut short; retried like a 5xx."""

    def __init__(self, reason: str, raw: str | None) -> None:
        super().__init__(reason)
        self.raw = raw


# What is worth another attempt. APITimeoutError is an APIConnectionError.
RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, InvalidOutput)
# What no retry can fix, and that would fail every row alike.
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


@dataclass(frozen=True)
class Endpoint:
    """Where requests go; picklable, so it travels to Spark executors. The key never prints."""

    base_url: str
    model: str
    api_key: SecretStr = dataclasses.field(default_factory=lambda: SecretStr("unused"))

    def redact(self, text: str | None) -> str | None:
        key = self.api_key.get_secret_value()
        return text.replace(key, "[REDACTED]") if text and len(key) >= 4 else text


@contextlib.contextmanager
def open_endpoint(teacher: TeacherConfig) -> Iterator[Endpoint]:
    """The configured endpoint; starts (and finally stops) the embedded teacher when none is set."""
    if teacher.embedded:
        from lakesynth import embedded

        with embedded.serve(teacher) as url:
            yield Endpoint(url, teacher.model)
        return
    if teacher.base_url == "databricks":
        yield _databricks_endpoint(teacher)
        return
    key = teacher.api_key()
    if teacher.api_key_env and not key:
        raise ConfigError(f"teacher.api_key_env: environment variable {teacher.api_key_env} is not set")
    yield Endpoint(teacher.base_url.rstrip("/"), teacher.model, SecretStr(key or "unused"))


def _databricks_endpoint(teacher: TeacherConfig) -> Endpoint:
    """Model Serving through databricks-sdk's unified auth (env vars, profile, notebook or job identity)."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    try:
        # The teacher's timeout also bounds the SDK's start-up probing of the host (300 s by default).
        wait = max(1, int(teacher.timeout_s))
        client = WorkspaceClient(config=Config(retry_timeout_seconds=wait, http_timeout_seconds=wait))
        header = client.config.authenticate().get("Authorization", "")
    except Exception as exc:  # noqa: BLE001 - the SDK raises several types; all mean "no usable credentials"
        raise EndpointError(f"teacher.base_url=databricks: cannot authenticate to Databricks: {exc}") from None
    token = header.removeprefix("Bearer ")
    return Endpoint(f"{client.config.host.rstrip('/')}/serving-endpoints", teacher.model, SecretStr(token))


@dataclass
class Result:
    key: str
    fingerprint: str
    model: str
    output: dict | None = None
    raw_output: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    attempts: int = 0
    from_journal: bool = False


def cost(prompt_tokens: int, completion_tokens: int, teacher: TeacherConfig) -> float | None:
    """Estimated cost in the configured currency; None where no price per token is configured."""
    if teacher.price_per_million_prompt_tokens is None or teacher.price_per_million_completion_tokens is None:
        return None
    return (
        prompt_tokens * teacher.price_per_million_prompt_tokens
        + completion_tokens * teacher.price_per_million_completion_tokens
    ) / 1e6


_JOURNAL_FINGERPRINT = re.compile(r'"fingerprint": "([0-9a-f]{64})"')


class Journal:
    """Append-only JSON lines of finished requests; one file per writer, so workers never contend."""

    def __init__(self, folder: str | None) -> None:
        self.folder = Path(folder) if folder else None
        self._file = None

    def load(self, wanted: set[str]) -> dict[str, Result]:
        """Successful results for the `wanted` fingerprints (a torn last line from a killed process is
        skipped). Lines are streamed and only hits are parsed: the journal grows with the stage, a
        batch's share of it does not."""
        found: dict[str, Result] = {}
        if not self.folder or not self.folder.is_dir():
            return found
        for path in sorted(self.folder.glob("*.jsonl")):
            with path.open(encoding="utf-8") as lines:
                for line in lines:
                    hit = _JOURNAL_FINGERPRINT.search(line)
                    if not hit or hit.group(1) not in wanted:
                        continue
                    with contextlib.suppress(json.JSONDecodeError, TypeError):
                        result = Result(**json.loads(line))
                        if result.error is None:
                            found[result.fingerprint] = result
        return found

    def append(self, result: Result) -> None:
        if not self.folder:
            return
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = (self.folder / f"{uuid.uuid4().hex}.jsonl").open("a", encoding="utf-8", buffering=1)
        self._file.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None


def clear_journal(folder: str) -> None:
    """Called once the stage's table holds the journal's results."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Call:
    """How one stage calls the teacher: the endpoint, the output model, generation parameters, limits."""

    endpoint: Endpoint
    teacher: TeacherConfig
    output: type[BaseModel]
    temperature: float
    max_tokens: int
    journal_dir: str | None = None
    label: str = "llm"

    @functools.cached_property
    def schema(self) -> dict:
        return self.output.model_json_schema()  # slow (pydantic walks the model): once per Call

    @property
    def params(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    @functools.cached_property
    def _fingerprint_prefix(self) -> bytes:
        fixed = {"model": self.endpoint.model, "schema": self.schema, "params": self.params}
        return json.dumps(fixed, sort_keys=True).encode() + b"\x1f"

    def fingerprint(self, messages: list[dict]) -> str:
        """Hash of everything that decides the answer (model, schema, parameters, messages): change any
        of it and the row is regenerated."""
        return hashlib.sha256(self._fingerprint_prefix + json.dumps(messages, sort_keys=True).encode()).hexdigest()

    def run(self, keyed_messages: Sequence[tuple[str, list[dict]]], *, workers: int = 1) -> list[Result]:
        """One Result per (key, messages), in order; this worker's share of the stage's concurrency."""
        (results,) = self.run_batches([keyed_messages], workers=workers)
        return results

    def run_batches(
        self, batches: Iterable[Sequence[tuple[str, list[dict]]]], *, workers: int = 1
    ) -> Iterator[list[Result]]:
        """One list of Results per batch, in order, through one pool of requests.

        The engine hands a partition over in batches of about a thousand rows. Called one batch at a time,
        the pool would empty at the end of every batch and stay idle while the engine prepares the next;
        here the next batch is taken while the previous one is still out (at most two batches held), and
        the requests run on an event loop in a thread of their own, so they keep going meanwhile.
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"lakesynth-{self.label}", daemon=True)
        thread.start()

        def on_loop(coro):
            return asyncio.run_coroutine_threadsafe(coro, loop)

        pool: _Pool | None = None
        running: collections.deque = collections.deque()
        try:
            pool = on_loop(_Pool.open(self, workers)).result()
            for batch in batches:
                # Fingerprints and the journal scan on this thread, so they never stall the requests in flight.
                fingerprints = [self.fingerprint(m) for _, m in batch]
                done = pool.journal.load(set(fingerprints))
                running.append(on_loop(pool.run(batch, fingerprints, done)))
                if len(running) > 1:
                    yield running.popleft().result()
            while running:
                yield running.popleft().result()
        finally:
            try:
                for future in running:
                    future.cancel()
                if pool is not None:
                    on_loop(pool.close()).result()
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

    def _parse(self, reply) -> dict:
        choice = reply.choices[0]
        raw = choice.message.content
        if choice.finish_reason == "length":
            raise InvalidOutput(f"reply cut at max_tokens={self.max_tokens}", raw)
        if choice.finish_reason == "content_filter":
            raise InvalidOutput("reply blocked by the endpoint's content filter", raw)
        try:
            return self.output.model_validate_json(raw or "").model_dump()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "reply"
            raise InvalidOutput(f"output did not match {self.output.__name__}: {where}: {first['msg']}", raw) from None

    def _describe_fatal(self, exc: openai.APIStatusError) -> str:
        hint = {
            401: "the token or API key is missing, wrong or expired (teacher.api_key_env, or Databricks auth)",
            403: "the credentials may not query this endpoint",
            404: f"no model or endpoint named '{self.endpoint.model}' at {self.endpoint.base_url} (teacher.model)",
            400: "the endpoint rejected the request; does it support response_format json_schema?",
        }.get(exc.status_code, "")
        return self.endpoint.redact(
            f"{self.label}: the teacher endpoint answered {exc.status_code}: {hint}. Server said: {exc.message}"
        )


class _Pool:
    """The requests of one `Call.run_batches`: one client, one concurrency limit, one journal file, one
    progress bar, shared by every batch it is given."""

    def __init__(self, call: Call, workers: int) -> None:
        teacher = call.teacher
        self.call = call
        self.journal = Journal(call.journal_dir)
        self.in_flight = max(1, -(-teacher.max_concurrency // workers))
        self.limit = asyncio.Semaphore(self.in_flight)
        self.rpm = _limiter(teacher.requests_per_minute, workers)
        self.tpm = _limiter(teacher.tokens_per_minute, workers)
        self.response_format = {
            "type": "json_schema",
            "json_schema": {"name": call.output.__name__, "schema": call.schema, "strict": True},
        }
        self.client = openai.AsyncOpenAI(
            base_url=call.endpoint.base_url,
            api_key=call.endpoint.api_key.get_secret_value(),
            max_retries=0,
            timeout=teacher.timeout_s,
        )
        self.bar = tqdm(total=0, desc=call.label, unit="req", mininterval=1.0, file=sys.stderr, disable=None)

    @classmethod
    async def open(cls, call: Call, workers: int) -> _Pool:
        return cls(call, workers)  # built on the loop that will use it

    async def run(
        self, keyed_messages: Sequence[tuple[str, list[dict]]], fingerprints: list[str], done: dict[str, Result]
    ) -> list[Result]:
        """Results for one batch; `done` holds the journal's successes for its fingerprints."""
        self.bar.total += len(keyed_messages)
        self.bar.refresh()
        # A fixed set of tasks pulls the requests in order: memory follows the requests in flight, not the
        # batch. Twice the limit, so a request waiting out a backoff does not leave a slot idle.
        results: list[Result] = [None] * len(keyed_messages)  # type: ignore[list-item]
        todo = iter(enumerate(zip(keyed_messages, fingerprints)))

        async def worker() -> None:
            for i, ((key, messages), fp) in todo:
                hit = done.get(fp)
                if hit:
                    results[i] = Result(**{**asdict(hit), "key": key, "from_journal": True})
                else:
                    results[i] = await self.one(key, messages, fp)
                self.bar.update()

        await asyncio.gather(*(worker() for _ in range(min(2 * self.in_flight, len(keyed_messages)))))
        return results

    async def one(self, key: str, messages: list[dict], fp: str) -> Result:
        call, teacher = self.call, self.call.teacher
        result = Result(key=key, fingerprint=fp, model=call.endpoint.model)
        started = time.monotonic()
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(teacher.max_retries + 1),
                wait=_backoff,
                retry=retry_if_exception_type(RETRYABLE),
                reraise=True,
            ):
                with attempt:
                    result.attempts += 1
                    async with self.limit:
                        if self.rpm:
                            await self.rpm.acquire()
                        if self.tpm:
                            await self.tpm.acquire(min(self.tpm.max_rate, call.max_tokens + _estimate_tokens(messages)))
                        reply = await self.client.chat.completions.create(
                            model=call.endpoint.model,
                            messages=messages,
                            response_format=self.response_format,
                            temperature=call.temperature,
                            max_tokens=call.max_tokens,
                        )
                    if reply.usage:
                        result.prompt_tokens += reply.usage.prompt_tokens or 0
                        result.completion_tokens += reply.usage.completion_tokens or 0
                    result.output, result.raw_output = call._parse(reply), None
        except FATAL as exc:
            raise EndpointError(call._describe_fatal(exc)) from None
        except openai.BadRequestError as exc:
            if "context" not in str(exc).lower() and "token" not in str(exc).lower():
                raise EndpointError(call._describe_fatal(exc)) from None
            result.error = call.endpoint.redact(f"BadRequestError: {exc}")
        except openai.APIConnectionError as exc:
            if not isinstance(exc, openai.APITimeoutError):
                raise EndpointError(
                    f"{call.label}: cannot reach the teacher at {call.endpoint.base_url} after "
                    f"{result.attempts} attempt(s): {exc}. Is the endpoint up and the URL right (teacher.base_url)?"
                ) from None
            result.error = f"APITimeoutError: no reply within {teacher.timeout_s} s ({result.attempts} attempts)"
        except RETRYABLE as exc:
            result.error = call.endpoint.redact(f"{type(exc).__name__}: {exc} (after {result.attempts} attempts)")
            result.raw_output = call.endpoint.redact(getattr(exc, "raw", None))
        result.latency_ms = int((time.monotonic() - started) * 1000)
        self.journal.append(result)
        return result

    async def close(self) -> None:
        """Cancel what is still out (a failed batch stops the rest), then release the client."""
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.bar.close()
        self.journal.close()
        await self.client.close()


def preflight(call: Call, first: list[tuple[str, list[dict]]]) -> None:
    """Send a stage's first request once from the driver, cut to one token and unjournaled, so a bad
    key, model, schema or URL fails cleanly (EndpointError) before any Spark job starts. It costs one
    prompt, and unlike a full first call it does not hold up the whole batch behind it."""
    teacher = call.teacher.model_copy(update={"max_retries": 0})
    dataclasses.replace(call, teacher=teacher, max_tokens=1, journal_dir=None, label=f"{call.label} check").run(first)


def _limiter(per_minute: int | None, workers: int):
    if not per_minute:
        return None
    from aiolimiter import AsyncLimiter

    return AsyncLimiter(max(1, per_minute // workers), 60)


def _estimate_tokens(messages: list[dict]) -> int:
    return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 1


def _backoff(state) -> float:
    """Exponential backoff with full jitter, or the server's Retry-After when it sends one."""
    exc = state.outcome.exception() if state.outcome else None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = response.headers
        with contextlib.suppress(TypeError, ValueError):
            if "retry-after-ms" in headers:
                return float(headers["retry-after-ms"]) / 1000
            if "retry-after" in headers:
                return float(headers["retry-after"])
    return random.uniform(0, min(30.0, 0.5 * 2 ** (state.attempt_number - 1)))


# --- ai_query for the embedded engine ------------------------------------------------------------
# Databricks has a built-in ai_query; locally the same SQL text calls this pandas UDF, registered
# under that name. It takes the same arguments and returns the same struct of result + error.

_DDL_TYPES = {"STRING": str, "INT": int, "BIGINT": int, "DOUBLE": float, "FLOAT": float, "BOOLEAN": bool}


def model_from_ddl(ddl: str, name: str = "Response") -> type[BaseModel]:
    """A pydantic model from a responseFormat DDL; its one top-level field is dropped, as ai_query does."""
    fields = _ddl_fields(ddl)
    if len(fields) != 1 or not isinstance(fields[0][1], list):
        raise ConfigError(f"responseFormat {ddl!r}: expected STRUCT<name: STRUCT<...>> with one top-level field")
    inner = {n: (_py_type(t), ...) for n, t in fields[0][1]}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **inner)


def _py_type(t):
    if isinstance(t, list):
        raise ConfigError("nested STRUCT fields are not supported in responseFormat")
    if isinstance(t, tuple):
        return list[_py_type(t[1])]
    return _DDL_TYPES[t]


def _ddl_fields(ddl: str) -> list:
    """Parse `STRUCT<a: STRING, b: ARRAY<STRING>, c: STRUCT<...>>` into [(name, type)]."""
    import re

    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[<>:,]", ddl)
    pos = 0

    def take(expected=None):
        nonlocal pos
        token = tokens[pos]
        if expected and token.upper() != expected:
            raise ConfigError(f"responseFormat {ddl!r}: expected {expected!r}, found {token!r}")
        pos += 1
        return token

    def parse_type():
        word = take().upper()
        if word == "STRUCT":
            take("<")
            fields = []
            while True:
                name = take()
                take(":")
                fields.append((name, parse_type()))
                if take() == ">":
                    return fields
        if word == "ARRAY":
            take("<")
            inner = parse_type()
            take(">")
            return ("ARRAY", inner)
        if word not in _DDL_TYPES:
            raise ConfigError(f"responseFormat {ddl!r}: unsupported type {word}")
        return word

    try:
        return parse_type()
    except IndexError:
        raise ConfigError(f"responseFormat {ddl!r}: unexpected end") from None


def ai_query_udf(
    endpoint: Endpoint, teacher: TeacherConfig, *, journal_dir: str | None, workers: int, label: str = "responses"
):
    """The local `ai_query(endpoint, request, modelParameters => …, responseFormat => …, failOnError => …)`."""
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf

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
        params = modelParameters.iloc[0].to_dict() if len(request) else {}
        output = model_from_ddl(responseFormat.iloc[0]) if len(request) else BaseModel
        call = Call(
            Endpoint(
                endpoint.base_url, str(endpoint_name.iloc[0]) if len(request) else endpoint.model, endpoint.api_key
            ),
            teacher,
            output,
            temperature=float(params.get("temperature", 0.0)),
            max_tokens=int(params.get("max_tokens", 1024)),
            journal_dir=journal_dir,
            label=label,
        )
        results = call.run([(str(i), [{"role": "user", "content": r}]) for i, r in enumerate(request)], workers=workers)
        if len(request) and bool(failOnError.iloc[0]):
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
