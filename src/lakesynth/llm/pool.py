"""The pool of requests that runs a stage's Call: one HTTP client, one concurrency limit, one journal, and the
rate limits each endpoint shares across the pools of this process."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from typing import Protocol

import httpx2 as httpx
from tqdm import tqdm

from lakesynth.config import EndpointSettings
from lakesynth.errors import EndpointError
from lakesynth.llm import progress, stop
from lakesynth.llm.auth import Auth, Endpoint, tls
from lakesynth.llm.journal import Journal, Result
from lakesynth.llm.retry import (
    FATAL_STATUS,
    RETRYABLE,
    RETRYABLE_STATUS,
    ROW_ERROR_CODES,
    THROTTLED,
    UNREACHABLE,
    InvalidOutput,
    RejectedStatus,
    RetryableStatus,
    Throttled,
    Unfinished,
    backoff,
    error_detail,
    retry_after,
    throttle_backoff,
)
from lakesynth.llm.throttle import AdaptiveConcurrency, Gate, is_throttle
from lakesynth.llm.throttle import shared as _shared_concurrency

BURST_S = 1.0  # a rate limit lets one second's worth of its budget go at once


class Requests(Protocol):
    """What a pool needs of the Call it runs: the endpoint and its limits, the body's fixed part, the parse. A
    protocol, so that this module need not import call.py, which imports it."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def teacher(self) -> EndpointSettings: ...
    @property
    def label(self) -> str: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def journal_dir(self) -> str | None: ...
    @property
    def body_prefix(self) -> bytes: ...
    def parse(self, content: bytes, result: Result) -> dict: ...
    def describe_fatal(self, status: int, message: str) -> str: ...


class Pool:
    """The requests of one `Call.run_batches`: one HTTP client, one concurrency limit, one journal, one
    progress bar, shared by every batch it is given."""

    def __init__(self, call: Requests, workers: int, preflight: bool) -> None:
        teacher, endpoint = call.teacher, call.endpoint
        self.call = call
        self.preflight = preflight  # a 400 stops the stage (the request's shape is what a preflight checks)
        self.answered = False  # has the endpoint answered any request of this pool yet?
        self.journal = Journal(call.journal_dir, teacher.journal_flush_s)
        stop.register(self.journal)  # a Ctrl-C writes its finished requests at once
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
            verify=tls(),
            headers={"Content-Type": "application/json"},
            timeout=teacher.timeout_s,
            # The semaphore caps the requests in flight; the client only keeps their connections alive.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.in_flight),
        )
        self.bar = tqdm(total=0, desc=call.label, unit="req", mininterval=1.0, file=sys.stderr, disable=None)
        # Without a terminal (the bar is off): the stage's progress lines, else this pool's own.
        self.lines = progress.current(call.label)
        self.own_lines = None if self.lines or progress.terminal() else progress.Lines(call.label, last=False)
        self.lines = self.lines or self.own_lines
        self.request_rate = _rate_limit(endpoint, "requests", teacher.requests_per_minute, workers)
        self.token_rate = _rate_limit(endpoint, "tokens", teacher.tokens_per_minute, workers)
        for rate in (self.request_rate, self.token_rate):
            if rate:
                rate.hold()  # released in close()

    @classmethod
    async def open(cls, call: Requests, workers: int, preflight: bool) -> Pool:
        return cls(call, workers, preflight)  # built on the loop that will use it

    async def run(
        self, keys: list[str], messages: list[bytes], fingerprints: list[str], done: dict[str, Result]
    ) -> list[Result]:
        """Results for one batch; `done` holds the journal's successes for its fingerprints."""
        self.bar.total += len(keys)
        self.bar.refresh()
        if self.own_lines:
            self.own_lines.add_total(len(keys))
        # A fixed set of tasks pulls the requests in order: memory follows the requests in flight, not the
        # batch. Twice the limit, so a request waiting out a backoff does not leave a slot idle.
        results: list[Result] = [None] * len(keys)  # type: ignore[list-item]
        todo = iter(enumerate(zip(keys, messages, fingerprints)))

        async def worker() -> None:
            for i, (key, encoded, fp) in todo:
                if stop.requested():  # Ctrl-C: no new requests; the process is ending
                    return
                hit = done.get(fp)
                if hit:
                    results[i] = dataclasses.replace(hit, key=key, from_journal=True)
                else:
                    results[i] = await self.one(key, encoded, fp)
                self.bar.update()
                if self.lines:
                    self.lines.update(errors=results[i].error is not None)

        await asyncio.gather(*(worker() for _ in range(min(2 * self.in_flight, len(keys)))))
        self.journal.flush()
        return results

    async def one(self, key: str, messages: bytes, fp: str) -> Result:
        """One row's request, retried as RETRYABLE says, then journaled; its failure stays in the Result.

        A plain loop, not tenacity: the policy fits in these lines, and tenacity's machinery cost about
        28 us per request, 3% of the client's whole CPU per request on this path."""
        call = self.call
        result = Result(key=key, fingerprint=fp, model=call.endpoint.model)
        body = call.body_prefix + messages + b"}"
        attempts, throttles = call.teacher.max_retries + 1, call.teacher.max_throttle_retries
        failed = throttled = 0
        started, first_throttle = time.monotonic(), None
        while True:
            result.attempts += 1  # every request sent, throttled ones included
            try:
                result.output = await self.attempt(body, result)
                break
            except (RejectedStatus, Unfinished) as exc:
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
                await asyncio.sleep(throttle_backoff(throttled, throttles, exc))
            except RETRYABLE as exc:
                failed += 1
                if failed == attempts:
                    self.record(result, exc)
                    break
                await asyncio.sleep(backoff(failed, exc))
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
        return self.call.parse(response.content, result)

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
        message, codes = error_detail(response.content)
        if status in FATAL_STATUS or (self.preflight and status == 400 and not ROW_ERROR_CODES.intersection(codes)):
            return EndpointError(self.auth.redact(self.call.describe_fatal(status, message)))
        if status in RETRYABLE_STATUS or status >= 500:
            asked = retry_after(response.headers)
            if is_throttle(status, asked):
                return Throttled(status, message, codes, asked)
            return RetryableStatus(status, message, codes, asked)
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
        if self.own_lines:
            self.own_lines.close()
        self.journal.close()
        stop.unregister(self.journal)
        await self.client.aclose()


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


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
