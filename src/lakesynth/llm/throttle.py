"""Adaptive concurrency: how many requests a pool keeps in flight to an endpoint that throttles (AIMD).

Pay-per-token endpoints limit tokens and queries per minute and answer 429 past them. Rather than guess the
limit, the requests in flight follow the endpoint's answers, as NeMo Data Designer's async engine does:
one more per round trip of successes (additive increase), a quarter fewer on a throttle (multiplicative
decrease), between 1 and an endpoint's `max_concurrency` (a pool's share of it). The state is one per endpoint
(base URL and model) in the process, so the pools that come and go (batches, chunks, the local `ai_query`
UDF's calls) meet the limit where the last one left it; `concurrency_trace` reads it for a stage's
summary and `reset_concurrency` starts a stage afresh.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time

DECREASE = 0.75  # Data Designer's reduce factor: a quarter fewer in flight per throttle
COOLDOWN_S = 1.0  # after a decrease, throttles are not counted again for this long (or the Retry-After asked)
TRACE_POINTS = 40  # change points a summary keeps


def is_throttle(status: int, retry_after: float | None) -> bool:
    """A 429, or a 503 that asks for a wait: the endpoint's limits (not the row, not an outage)."""
    return status == 429 or (status == 503 and retry_after is not None)


class AdaptiveConcurrency:
    """The requests in flight one endpoint allows now, for every pool of this process that calls it.

    One decrease per throttling episode: a throttle counts only if its request went out after the last
    decrease (those already in flight were sent under the old limit) and once the cooldown has passed (the
    server's Retry-After, else COOLDOWN_S). Otherwise a random share of 429s would halve the limit every few
    requests and leave a stage at 1; counted this way it costs a few slots, not the stage's speed.
    Reads and counts on the request path take no lock (a lost count is harmless); changes do.
    """

    def __init__(self, cap: int) -> None:
        self.limit = self.ceiling = self.low = self.high = cap
        self.epoch = 0  # decreases so far: a request sent in an older epoch cannot cause another
        self.successes = 0  # since the last change
        self.throttles = 0
        self.throttled_rows = 0  # rows whose error is a throttle, after max_throttle_retries
        self._calm_until = 0.0
        self._started = time.monotonic()
        self._trace: list[tuple[float, int]] = [(0.0, cap)]
        self._lock = threading.Lock()

    def open(self, cap: int) -> None:
        """A pool with this cap starts: a limit never lowered starts at the cap, one lowered stays (at most the cap)."""
        with self._lock:
            untouched = self.limit >= self.ceiling
            self.ceiling = cap
            if (untouched or self.limit > cap) and self.limit != cap:
                self._set(cap)

    def succeeded(self, epoch: int) -> None:
        """A 2xx: one more in flight once a round trip's worth (the limit) came back in a row, unthrottled."""
        if epoch != self.epoch:
            return  # sent under the old limit: it says nothing of the new one
        self.successes += 1
        if self.successes >= self.limit and self.limit < self.ceiling:
            with self._lock:
                if self.successes >= self.limit and self.limit < self.ceiling:
                    self._set(self.limit + 1)

    def throttled(self, epoch: int, retry_after: float | None) -> None:
        """A throttle of a request sent in `epoch`: a quarter fewer in flight, if it starts a new episode."""
        now = time.monotonic()
        with self._lock:
            self.throttles += 1
            if epoch != self.epoch:
                return
            self.successes = 0
            if now < self._calm_until:
                return
            self._calm_until = now + max(retry_after or 0.0, COOLDOWN_S)
            lower = max(1, math.floor(self.limit * DECREASE))
            if lower < self.limit:
                self.epoch += 1
                self._set(lower)

    def _set(self, limit: int) -> None:
        self.limit, self.successes = limit, 0
        self.low, self.high = min(self.low, limit), max(self.high, limit)
        self._trace.append((time.monotonic() - self._started, limit))
        if len(self._trace) > 4 * TRACE_POINTS * TRACE_POINTS:  # a long sawtooth: keep memory bounded
            self._trace = _turns(self._trace)

    def summary(self) -> dict:
        """The limit's course: final, least and most, throttles, decreases, and up to TRACE_POINTS change
        points [seconds since the start, limit] (the turning points, thinned evenly when there are more)."""
        with self._lock:
            points = _turns(self._trace)
            return {
                "final": self.limit,
                "min": self.low,
                "max": self.high,
                "cap": self.ceiling,
                "throttles": self.throttles,
                "decreases": self.epoch,
                "throttled_rows": self.throttled_rows,
                "trace": [[round(t, 2), c] for t, c in _thin(points, TRACE_POINTS)],
            }


class Gate:
    """A pool's slots: at most min(the endpoint's adaptive limit, the pool's cap) requests in flight, first
    come first served. asyncio.Semaphore cannot shrink; this one reads the limit at each acquire and
    release, so a decrease made by any pool of the process holds back the next request of every pool."""

    def __init__(self, shared: AdaptiveConcurrency, cap: int) -> None:
        self.shared, self.cap = shared, cap
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> tuple[int, bool]:
        """Wait for a slot; returns the epoch the request goes out in, and whether it fills the pool's limit. A
        limit that held nothing back (the pool's other requests are waiting out throttles, say) is not shown
        too low by the request's success."""
        if self._waiters or self.active >= min(self.shared.limit, self.cap):
            granted = asyncio.get_running_loop().create_future()
            self._waiters.append(granted)
            try:
                await granted  # release() counted this request in `active` when it granted the slot
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self.release()
                raise
        else:
            self.active += 1
        return self.shared.epoch, self.active >= min(self.shared.limit, self.cap)

    def release(self) -> None:
        self.active -= 1
        limit = min(self.shared.limit, self.cap)
        while self._waiters and self.active < limit:
            granted = self._waiters.popleft()
            if not granted.done():
                self.active += 1
                granted.set_result(None)


# One state per endpoint (base URL, model) in the process, as for the rate limits in pool.py.
_STATES: dict[tuple[str, str], AdaptiveConcurrency] = {}
_STATES_LOCK = threading.Lock()


def shared(base_url: str, model: str, cap: int) -> AdaptiveConcurrency:
    """The endpoint's state, opened for a pool with this cap."""
    with _STATES_LOCK:
        state = _STATES.get((base_url, model))
        if state is None:
            state = _STATES[(base_url, model)] = AdaptiveConcurrency(cap)
    state.open(cap)
    return state


def concurrency_trace(endpoint) -> dict | None:
    """The adaptive concurrency of `endpoint` (an llm.Endpoint) since its last reset, for a stage's summary:
    {"final", "min", "max", "cap", "throttles", "decreases", "throttled_rows", "trace": [[s, limit], ...]};
    None where no pool of this process called it (Databricks' built-in ai_query, say)."""
    with _STATES_LOCK:
        state = _STATES.get((endpoint.base_url, endpoint.model))
    return state.summary() if state else None


def reset_concurrency(endpoint=None) -> None:
    """Forget `endpoint`'s state (every endpoint's if None): its next pool starts at its cap, its trace anew."""
    with _STATES_LOCK:
        if endpoint is None:
            _STATES.clear()
        else:
            _STATES.pop((endpoint.base_url, endpoint.model), None)


def _turns(points: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The first, last and turning points (where the limit stops rising or falling)."""
    if len(points) <= 2:
        return list(points)
    kept = [points[0]]
    for before, point, after in zip(points, points[1:], points[2:]):
        if (point[1] - before[1]) * (after[1] - point[1]) < 0:
            kept.append(point)
    kept.append(points[-1])
    return kept


def _thin(points: list, most: int) -> list:
    if len(points) <= most:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]
