"""Requests to the teacher: a stage's Call, the pool of requests that runs it, rate limits, the preflight.

One request: fingerprint -> journal hit? -> send -> parse into the output model -> retry -> record.
The request path is lean because the client's CPU, not the endpoint, is what limits a fast endpoint
on a small machine: one pooled HTTP client per pool, the body's constant part serialised once per
Call, the reply parsed once and validated once (`model_validate_json`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.utils
import functools
import hashlib
import json
import math
import random
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import httpx2 as httpx
from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from lakesynth.core import serverless
from lakesynth.config import EndpointSettings
from lakesynth.errors import EndpointError
from lakesynth.llm.auth import Auth, Endpoint
from lakesynth.llm.journal import Journal, Result
from lakesynth.llm.throttle import AdaptiveConcurrency, Gate, is_throttle
from lakesynth.llm.throttle import shared as _shared_concurrency


class InvalidOutput(Exception):
    """The reply was not valid JSON, broke the schema, or was cut short; retried like a 5xx."""

    def __init__(self, reason: str, raw: str | None) -> None:
        super().__init__(reason)
        self.raw = raw


class StatusError(Exception):
    """An error reply: its status, the server's message and the API's error codes (code, type)."""

    def __init__(self, status: int, message: str, codes: tuple[str, ...], retry_after: float | None = None) -> None:
        self.status, self.message, self.codes, self.retry_after = status, message, codes, retry_after
        name = _STATUS_NAMES.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
        code = f" {codes[0]}" if codes else ""
        super().__init__(f"{name}: HTTP {status}{code}: {message}")


class RetryableStatus(StatusError):
    """A reply in RETRYABLE_STATUS, or a 5xx."""


class Throttled(RetryableStatus):
    """A 429, or a 503 that asks for a wait (Retry-After): the endpoint's limits, not the row's fault."""


class RejectedStatus(StatusError):
    """Any other error reply that is not fatal: this row's request was refused."""


# --- What becomes of a failed request: decided here and nowhere else ---------------------------------------
# 1. Retried, then the row's error once attempts run out (honouring Retry-After, up to MAX_RETRY_AFTER_S).
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx
RETRYABLE = (RetryableStatus, httpx.RequestError, InvalidOutput)  # RequestError: timeouts, refused, reset, ...
#    A throttle (Throttled: a 429, or a 503 with Retry-After) slows the pool (throttle.py) and is retried on a
#    budget of its own, the endpoint's max_throttle_retries, so a burst of them never spends max_retries. Should that
#    run out too, the row's error starts with THROTTLED, so a stage can leave it out of its failure rate.
THROTTLED = "throttled: "
# 2. The stage stops (EndpointError): no row could succeed. A Databricks token refused (401) is renewed and
#    the request sent once more first (see Auth).
FATAL_STATUS = {
    401: "the token or API key is missing, wrong or expired (the endpoint's api_key_env, or Databricks auth)",
    403: "the credentials may not query this endpoint",
    404: "no model or endpoint named '{model}' at {base_url} (the endpoint's model)",
}
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)  # before any reply came back
SHAPE_HINT = "the endpoint rejected the request; does it support response_format json_schema?"  # a preflight's 400
# 3. The row's error at once: every other status (400, 413, 422, the rest of 4xx), as a retry would send the
#    same request again. Only the preflight, whose job is the request's shape, stops the stage on a 400,
#    unless the API's error code (or type) says the fault lies in that row's content:
ROW_ERROR_CODES = frozenset(
    {
        "context_length_exceeded",  # OpenAI
        "string_above_max_length",  # OpenAI
        "invalid_prompt",  # OpenAI: a prompt its policy refuses
        "content_filter",  # Azure OpenAI
        "exceed_context_size_error",  # llama.cpp server (the embedded teacher), as its error type
    }
)
MAX_RETRY_AFTER_S = 60.0  # the longest server-requested wait honoured before a retry (jitter comes on top)
MAX_BACKOFF_S = 30.0
BURST_S = 1.0  # a rate limit lets one second's worth of its budget go at once

# OpenAI SDK class names for statuses, so errors read as they did when the SDK made the requests.
_STATUS_NAMES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


@dataclass(frozen=True)
class Call:
    """How one stage calls the teacher: the endpoint, the output model, generation parameters, limits."""

    endpoint: Endpoint
    teacher: EndpointSettings
    output: type[BaseModel]
    temperature: float
    max_tokens: int
    journal_dir: str | None = None
    label: str = "llm"
    # The JSON Schema the endpoint is asked for, when it is narrower than `output`'s (a stage whose replies'
    # shape depends on its inputs: the generated calls follow the tools' parameters). Replies are still
    # validated by `output`; not strict, as OpenAI's strict mode accepts only a subset of JSON Schema.
    json_schema: dict | None = None
    # What else decides a row's result though the endpoint never sees it (the embeddings model that scores the
    # reply): part of the fingerprint, so changing it asks again.
    fingerprint_extra: dict | None = None

    @functools.cached_property
    def schema(self) -> dict:
        if self.json_schema is not None:
            return self.json_schema
        return self.output.model_json_schema()  # slow (pydantic walks the model): once per Call

    @property
    def params(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    @functools.cached_property
    def response_format(self) -> dict:
        return {
            "type": "json_schema",
            "json_schema": {"name": self.output.__name__, "schema": self.schema, "strict": self.json_schema is None},
        }

    @functools.cached_property
    def _fingerprint_prefix(self) -> bytes:
        fixed = {"model": self.endpoint.model, "schema": self.schema, "params": self.params}
        if self.fingerprint_extra:
            fixed["extra"] = self.fingerprint_extra
        return json.dumps(fixed, sort_keys=True).encode() + b"\x1f"

    @functools.cached_property
    def _body_prefix(self) -> bytes:
        """The request body up to its messages (model, response format, parameters), serialised once."""
        fixed = {"model": self.endpoint.model, "response_format": self.response_format, **self.params}
        return json.dumps(fixed, separators=(",", ":")).encode()[:-1] + b',"messages":'

    def fingerprint(self, messages: list[dict]) -> str:
        """Hash of everything that decides the answer (model, schema, parameters, messages): change any
        of it and the row is regenerated."""
        return self._fingerprint(_encode(messages))

    def _fingerprint(self, messages: bytes) -> str:
        return hashlib.sha256(self._fingerprint_prefix + messages).hexdigest()

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
        return self._stream(batches, workers=workers, preflight=False)

    def _stream(
        self, batches: Iterable[Sequence[tuple[str, list[dict]]]], *, workers: int, preflight: bool
    ) -> Iterator[list[Result]]:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"lakesynth-{self.label}", daemon=True)
        serverless.mark_thread(thread)  # its connections count as made where this runs (a UDF, or the driver)
        thread.start()

        def on_loop(coro):
            return asyncio.run_coroutine_threadsafe(coro, loop)

        pool: _Pool | None = None
        running: collections.deque = collections.deque()
        try:
            pool = on_loop(_Pool.open(self, workers, preflight)).result()
            for batch in batches:
                # Serialising, fingerprints and the journal scan on this thread, so they never stall the
                # requests in flight. The messages are serialised once: the same bytes are hashed and sent.
                encoded = [_encode(messages) for _, messages in batch]
                fingerprints = [self._fingerprint(e) for e in encoded]
                done = pool.journal.load(set(fingerprints))
                running.append(on_loop(pool.run([key for key, _ in batch], encoded, fingerprints, done)))
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

    def _parse(self, content: bytes, result: Result) -> dict:
        """The validated output of a 2xx reply (its token counts added to `result`), or InvalidOutput."""
        try:
            reply = json.loads(content)
            choice = reply["choices"][0]
            message = choice["message"]
            raw, finish = message.get("content"), choice.get("finish_reason")
            usage = reply.get("usage") or {}
            result.prompt_tokens += usage.get("prompt_tokens") or 0
            result.completion_tokens += usage.get("completion_tokens") or 0
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raw = content[:2000].decode("utf-8", "replace")
            raise InvalidOutput(f"the reply is not a chat completion ({type(exc).__name__}: {exc})", raw) from None
        if finish == "length":
            raise InvalidOutput(f"reply cut at max_tokens={self.max_tokens}", raw)
        if finish == "content_filter":
            raise InvalidOutput("reply blocked by the endpoint's content filter", raw)
        if raw is None and message.get("refusal"):
            raise InvalidOutput(f"the model refused: {message['refusal']}", None)
        return validate_output(self.output, raw)

    def _describe_fatal(self, status: int, message: str) -> str:
        hint = FATAL_STATUS.get(status, SHAPE_HINT).format(model=self.endpoint.model, base_url=self.endpoint.base_url)
        return f"{self.label}: the teacher endpoint answered {status}: {hint}. Server said: {message}"


class _Pool:
    """The requests of one `Call.run_batches`: one HTTP client, one concurrency limit, one journal, one
    progress bar, shared by every batch it is given."""

    def __init__(self, call: Call, workers: int, preflight: bool) -> None:
        teacher, endpoint = call.teacher, call.endpoint
        self.call = call
        self.preflight = preflight  # a 400 stops the stage (the request's shape is what a preflight checks)
        self.answered = False  # has the endpoint answered any request of this pool yet?
        self.journal = Journal(call.journal_dir, teacher.journal_flush_s)
        self.in_flight = max(1, -(-teacher.max_concurrency // workers))
        # The pool's share of max_concurrency is the most in flight; the endpoint's throttles decide how many
        # of them are used (shared with every pool of this process that calls it).
        self.adapt = teacher.adaptive_concurrency
        if self.adapt:
            self.concurrency = _shared_concurrency(endpoint.base_url, endpoint.model, self.in_flight)
        else:
            self.concurrency = AdaptiveConcurrency(self.in_flight)  # this pool's own, never changed
        self.slots = Gate(self.concurrency, self.in_flight)
        self.url = httpx.URL(f"{endpoint.base_url}/chat/completions")
        self.auth = Auth(endpoint, teacher.timeout_s)
        self.client = httpx.AsyncClient(
            headers={"Content-Type": "application/json"},
            timeout=teacher.timeout_s,
            # The semaphore caps the requests in flight; the client only keeps their connections alive.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.in_flight),
        )
        self.bar = tqdm(total=0, desc=call.label, unit="req", mininterval=1.0, file=sys.stderr, disable=None)
        self.request_rate = _rate_limit(endpoint, "requests", teacher.requests_per_minute, workers)
        self.token_rate = _rate_limit(endpoint, "tokens", teacher.tokens_per_minute, workers)
        for rate in (self.request_rate, self.token_rate):
            if rate:
                rate.hold()  # released in close()

    @classmethod
    async def open(cls, call: Call, workers: int, preflight: bool) -> _Pool:
        return cls(call, workers, preflight)  # built on the loop that will use it

    async def run(
        self, keys: list[str], messages: list[bytes], fingerprints: list[str], done: dict[str, Result]
    ) -> list[Result]:
        """Results for one batch; `done` holds the journal's successes for its fingerprints."""
        self.bar.total += len(keys)
        self.bar.refresh()
        # A fixed set of tasks pulls the requests in order: memory follows the requests in flight, not the
        # batch. Twice the limit, so a request waiting out a backoff does not leave a slot idle.
        results: list[Result] = [None] * len(keys)  # type: ignore[list-item]
        todo = iter(enumerate(zip(keys, messages, fingerprints)))

        async def worker() -> None:
            for i, (key, encoded, fp) in todo:
                hit = done.get(fp)
                if hit:
                    results[i] = dataclasses.replace(hit, key=key, from_journal=True)
                else:
                    results[i] = await self.one(key, encoded, fp)
                self.bar.update()

        await asyncio.gather(*(worker() for _ in range(min(2 * self.in_flight, len(keys)))))
        self.journal.flush()
        return results

    async def one(self, key: str, messages: bytes, fp: str) -> Result:
        """One row's request, retried as RETRYABLE says, then journaled; its failure stays in the Result.

        A plain loop, not tenacity: the policy fits in these lines, and tenacity's machinery cost about
        28 us per request, 3% of the client's whole CPU per request on this path."""
        call = self.call
        result = Result(key=key, fingerprint=fp, model=call.endpoint.model)
        body = call._body_prefix + messages + b"}"
        attempts, throttles = call.teacher.max_retries + 1, call.teacher.max_throttle_retries
        failed = throttled = 0
        started, first_throttle = time.monotonic(), None
        while True:
            result.attempts += 1  # every request sent, throttled ones included
            try:
                result.output = await self.attempt(body, result)
                break
            except RejectedStatus as exc:
                self.record(result, exc)
                break
            except Throttled as exc:
                throttled += 1
                now = time.monotonic()
                first_throttle = first_throttle or now
                patient = now - first_throttle < call.teacher.throttle_patience_s
                if throttled > throttles and not patient:
                    self.record(result, exc)
                    break
                wait = _backoff(throttled, exc)
                if throttled > throttles:  # past the count, still within patience: back off further each time
                    wait = max(wait, random.uniform(0.5, 1.0) * min(MAX_BACKOFF_S, 0.5 * 2 ** (throttled - throttles)))
                await asyncio.sleep(wait)
            except RETRYABLE as exc:
                failed += 1
                if failed == attempts:
                    self.record(result, exc)
                    break
                await asyncio.sleep(_backoff(failed, exc))
        result.latency_ms = int((time.monotonic() - started) * 1000)
        self.journal.append(result)
        return result

    async def attempt(self, body: bytes, result: Result) -> dict:
        response, header, (epoch, full) = await self.send(body)
        if response.status_code == 401 and self.auth.refreshable:  # an expired token: renew it, send once more
            self.auth.refresh(header)
            response, _, (epoch, full) = await self.send(body)
        if not 200 <= response.status_code < 300:
            error = self.status_error(response)
            if self.adapt and isinstance(error, Throttled):
                self.concurrency.throttled(epoch, error.retry_after)
            raise error
        if self.adapt and full:
            self.concurrency.succeeded(epoch)
        return self.call._parse(response.content, result)

    async def send(self, body: bytes) -> tuple[httpx.Response, dict[str, str], tuple[int, bool]]:
        """The reply, the auth header it was sent with, and its slot (Gate.acquire: epoch, limit filled)."""
        slot = await self.slots.acquire()
        try:
            await self.pace(body)
            header = self.auth.header()
            response = await self.client.post(self.url, content=body, headers=header)
        finally:
            self.slots.release()
        self.answered = True
        return response, header, slot

    async def pace(self, body: bytes) -> None:
        """Wait for the shared rate limits, if any; the token cost is the completion limit plus the body's
        length / 4, an estimate of its prompt tokens."""
        wait = self.request_rate.reserve(1) if self.request_rate else 0.0
        if self.token_rate:
            wait = max(wait, self.token_rate.reserve(self.call.max_tokens + len(body) // 4))
        if wait:
            await asyncio.sleep(wait)

    def status_error(self, response: httpx.Response) -> Exception:
        """The exception for an error reply, as the table at the top of this module says."""
        status = response.status_code
        message, codes = _error_detail(response.content)
        if status in FATAL_STATUS or (self.preflight and status == 400 and not ROW_ERROR_CODES.intersection(codes)):
            return EndpointError(self.auth.redact(self.call._describe_fatal(status, message)))
        if status in RETRYABLE_STATUS or status >= 500:
            retry_after = _retry_after(response.headers)
            if is_throttle(status, retry_after):
                return Throttled(status, message, codes, retry_after)
            return RetryableStatus(status, message, codes, retry_after)
        return RejectedStatus(status, message, codes)

    def record(self, result: Result, exc: Exception) -> None:
        """Make the last attempt's failure the row's error; raise EndpointError if the endpoint was never reached."""
        call, attempts = self.call, f"after {result.attempts} attempt{'s' if result.attempts > 1 else ''}"
        if isinstance(exc, UNREACHABLE) and not self.answered:
            raise EndpointError(
                self.auth.redact(
                    f"{call.label}: cannot reach the teacher at {call.endpoint.base_url} {attempts}: {_name(exc)}. "
                    "Is the endpoint up and the URL right (the endpoint's base_url)?"
                )
            ) from None
        if isinstance(exc, httpx.TimeoutException):
            error = f"APITimeoutError: no reply within {call.teacher.timeout_s} s"
        elif isinstance(exc, httpx.RequestError):
            error = f"APIConnectionError: {_name(exc)}"
        elif isinstance(exc, Throttled):
            error = f"{THROTTLED}{exc}"
            self.concurrency.throttled_rows += 1
        else:
            error = f"{type(exc).__name__}: {exc}" if isinstance(exc, InvalidOutput) else str(exc)
        result.output = None
        result.error = self.auth.redact(f"{error} ({attempts})")
        result.raw_output = self.auth.redact(getattr(exc, "raw", None))

    async def close(self) -> None:
        """Cancel what is still out (a failed batch stops the rest), then release the client and the limits."""
        for rate in (self.request_rate, self.token_rate):
            if rate:
                rate.release()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.bar.close()
        self.journal.close()
        await self.client.aclose()


def validate_output(output: type[BaseModel], raw: str | None) -> dict:
    """A reply's text as the output model's fields, or InvalidOutput naming the first field that does not match."""
    try:
        return output.model_validate_json(raw or "").model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "reply"
        raise InvalidOutput(f"output did not match {output.__name__}: {where}: {first['msg']}", raw) from None


def preflight(call: Call, first: list[tuple[str, list[dict]]]) -> None:
    """Send a stage's first request once from the driver, cut to one token and unjournaled, so a bad
    key, model, schema or URL fails cleanly (EndpointError) before any Spark job starts. It costs one
    prompt, and unlike a full first call it does not hold up the whole batch behind it. A failure of
    that row alone (a 429, a prompt too long) is not the endpoint's and lets the stage go on."""
    teacher = call.teacher.model_copy(update={"max_retries": 0, "max_throttle_retries": 0, "throttle_patience_s": 0.0})
    check = dataclasses.replace(call, teacher=teacher, max_tokens=1, journal_dir=None, label=f"{call.label} check")
    for _ in check._stream([first], workers=1, preflight=True):
        pass


class RateLimit:
    """A per-minute budget (of requests or tokens) for one endpoint, shared by every pool, batch and thread
    of this process that calls it. GCRA: a caller reserves its part under a lock and is told how long to
    sleep, so it works across threads and event loops alike, and nothing polls.

    The configured limit is the stage's, spread over `workers`: a process gets `per_minute / workers` for
    each pool of the stage it runs, up to `workers` of them. On a cluster every worker is a process of its
    own holding its share; the embedded engine runs all the workers' pools in one process, which so holds
    the whole limit. Pools that come and go (batches, chunks) meet the budget where the last one left it.
    """

    def __init__(self, per_minute: int, workers: int) -> None:
        self.per_minute, self.workers = per_minute, workers
        self._holders = 0
        self._paid_until = 0.0  # when what was reserved so far is paid back (time.monotonic)
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1

    def reserve(self, amount: float = 1.0) -> float:
        """Seconds to wait before spending `amount`; the reservation is made at once."""
        with self._lock:
            share = self.per_minute / self.workers * min(max(self._holders, 1), self.workers)
            interval = 60.0 / share  # seconds per unit
            now = time.monotonic()
            self._paid_until = max(self._paid_until, now) + amount * interval
            return max(0.0, self._paid_until - now - max(BURST_S, interval))


# One RateLimit per endpoint and limit in the process: a limit is the endpoint's, not a pool's, and pools run
# on event loops of their own in threads of their own.
_RATE_LIMITS: dict[tuple, RateLimit] = {}
_RATE_LIMITS_LOCK = threading.Lock()


def _rate_limit(endpoint: Endpoint, unit: str, per_minute: int | None, workers: int) -> RateLimit | None:
    if not per_minute:
        return None
    key = (endpoint.base_url, endpoint.model, unit, per_minute, workers)
    with _RATE_LIMITS_LOCK:
        if key not in _RATE_LIMITS:
            _RATE_LIMITS[key] = RateLimit(per_minute, workers)
        return _RATE_LIMITS[key]


def _encode(messages: list[dict]) -> bytes:
    """The messages as JSON: hashed into the fingerprint, and the same bytes sent in the body."""
    return json.dumps(messages, sort_keys=True).encode()


def _backoff(attempt: int, exc: BaseException) -> float:
    """Seconds before the next attempt: the server's Retry-After where it sent one, up to MAX_RETRY_AFTER_S
    and spread by up to a quarter more so that rows told the same wait do not all come back at once;
    otherwise exponential with full jitter."""
    asked = getattr(exc, "retry_after", None)
    if asked is not None:
        wait = min(asked, MAX_RETRY_AFTER_S)
        return random.uniform(wait, 1.25 * wait)
    return random.uniform(0, min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)))


def _retry_after(headers: httpx.Headers) -> float | None:
    """The wait a server asks for: retry-after-ms (OpenAI, Azure), else Retry-After in seconds or as a date."""
    value = headers.get("retry-after-ms")
    scale = 1000.0
    if value is None:
        value, scale = headers.get("retry-after"), 1.0
    if value is None:
        return None
    try:
        seconds = float(value) / scale
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return None if math.isnan(seconds) else max(0.0, seconds)


def _error_detail(content: bytes) -> tuple[str, tuple[str, ...]]:
    """The server's message and the API's error codes from an error reply: OpenAI's `{"error": {message,
    type, code}}` (llama.cpp and vLLM send variants of it), Databricks' `{error_code, message}`,
    FastAPI's `{detail}`, or plain text."""
    try:
        body = json.loads(content)
    except ValueError:
        return content[:500].decode("utf-8", "replace").strip(), ()
    error = body.get("error", body) if isinstance(body, dict) else body
    if not isinstance(error, dict):
        return str(error)[:500], ()
    message = error.get("message") or error.get("detail") or body.get("message") or error
    message = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
    codes = (error.get("code"), error.get("type"), body.get("error_code"))
    return message[:500], tuple(c for c in codes if isinstance(c, str) and c)


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
