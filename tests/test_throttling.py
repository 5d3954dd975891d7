"""Throttling against the stand-in: 429s slow a stage (adaptive concurrency, a retry budget of their own) and
never become row errors under normal throttling. Timings are in benchmarks/throttling.py, never asserted here."""

from __future__ import annotations

import itertools
import threading

import pytest
from pydantic import BaseModel, ConfigDict

from lakesynth import llm
from lakesynth.config import EndpointSettings
from lakesynth.llm.standin import StandIn, StandInOptions
from lakesynth.llm.throttle import AdaptiveConcurrency, concurrency_trace, reset_concurrency


class Questions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reasoning: str
    questions: list[str]


@pytest.fixture
def server():
    s = StandIn(StandInOptions()).start()
    reset_concurrency()
    yield s
    s.stop()
    reset_concurrency()


def _call(server: StandIn, **teacher) -> llm.Call:
    settings = {"timeout_s": 5, "throttle_patience_s": 0, **teacher}  # no patience unless a test is about it
    cfg = EndpointSettings(base_url=server.base_url, model="standin", **settings)
    return llm.Call(llm.Endpoint(server.base_url, "standin"), cfg, Questions, temperature=0.5, max_tokens=256)


def _requests(n: int, start: int = 0) -> list[tuple[str, list[dict]]]:
    return [(f"row-{i}", [{"role": "user", "content": f"Write questions about topic {i}"}]) for i in range(start, n)]


def _run_as_workers(call: llm.Call, requests: list, workers: int) -> list:
    """Each worker's share through its own pool on a thread of its own, as the embedded engine runs a stage's
    partitions (and the local ai_query UDF's calls) in one process."""
    results: list = []
    threads = [
        threading.Thread(target=lambda part=requests[w::workers]: results.extend(call.run(part, workers=workers)))
        for w in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_thirty_percent_429s_with_retry_after_leave_no_row_error_and_lower_the_concurrency(server):
    server.reset(latency_ms=20, fault_rate=0.3, faults=("429",), retry_after_ms=(50, 200), seed=4)
    call = _call(server, max_concurrency=16, max_retries=0)  # no ordinary retries: only the throttle budget
    results = _run_as_workers(call, _requests(300), workers=2)
    assert len({r.key for r in results}) == 300 and all(r.error is None for r in results)
    assert server.stats.faults["429"] > 50 and any(r.attempts > 2 for r in results)
    trace = concurrency_trace(call.endpoint)
    assert trace["throttles"] == server.stats.faults["429"] and trace["throttled_rows"] == 0
    assert trace["decreases"] >= 1 and trace["min"] < trace["max"] == trace["cap"] == 8  # 16 over 2 workers
    limits = [limit for _, limit in trace["trace"]]
    assert any(b < a for a, b in itertools.pairwise(limits))  # the trace shows the decreases
    assert all(1 <= limit <= 8 for limit in limits) and len(trace["trace"]) <= 40
    seconds = [t for t, _ in trace["trace"]]
    assert seconds == sorted(seconds)


def test_a_503_with_retry_after_is_a_throttle_and_a_plain_one_spends_the_ordinary_budget(server):
    server.reset(fault_rate=0.5, faults=("503_retry_after",), seed=2)
    results = _call(server, max_retries=0).run(_requests(40))
    assert all(r.error is None for r in results) and server.stats.faults["503_retry_after"] > 0
    assert concurrency_trace(_call(server).endpoint)["throttles"] == server.stats.faults["503_retry_after"]
    server.reset(fault_rate=1.0, faults=("500",))
    (result,) = _call(server, max_retries=1, max_throttle_retries=5).run(_requests(1))
    assert result.attempts == 2 and result.error.startswith("InternalServerError: HTTP 500")


def test_a_row_throttled_past_its_budget_says_so_and_spent_none_of_max_retries(server):
    server.reset(fault_rate=1.0, faults=("429",))
    results = _call(server, max_retries=5, max_throttle_retries=2).run(_requests(3))
    for r in results:
        assert r.output is None and r.attempts == 3  # three throttles; max_retries untouched
        assert r.error.startswith("throttled: RateLimitError: HTTP 429") and r.error.endswith("(after 3 attempts)")
    assert concurrency_trace(_call(server).endpoint)["throttled_rows"] == 3


def test_an_endpoint_at_capacity_asking_for_short_waits_fails_no_row_within_the_patience(server):
    """Throttled replies come back at once: 2 retries are spent in a fraction of a second, but a row is given up
    only after throttle_patience_s of throttling too, backing off further each time."""
    server.reset(latency_ms=20, throttle_above=2, retry_after_ms=(20, 40), seed=3)
    call = _call(server, max_concurrency=12, max_retries=0, max_throttle_retries=2, throttle_patience_s=30)
    results = call.run(_requests(60))
    assert [r.error for r in results if r.error] == []
    assert concurrency_trace(call.endpoint)["throttles"] > 0


def test_the_limit_persists_across_pools_of_one_endpoint_until_reset(server):
    server.reset(latency_ms=10, fault_rate=1.0, faults=("429",))
    call = _call(server, max_concurrency=8, max_throttle_retries=0)
    call.run(_requests(8))  # every request throttled: the limit falls
    lowered = concurrency_trace(call.endpoint)
    assert lowered["final"] < 8 and lowered["decreases"] >= 1
    server.reset(latency_ms=30)
    call.run(_requests(8))  # a new pool (the next chunk, the next ai_query batch) starts where the last one left
    assert server.stats.max_in_flight <= lowered["final"]
    other = llm.Endpoint(server.base_url, "another-model")
    assert concurrency_trace(other) is None  # keyed per endpoint: base URL and model
    reset_concurrency(call.endpoint)
    assert concurrency_trace(call.endpoint) is None
    server.reset(latency_ms=30)
    call.run(_requests(8))
    assert server.stats.max_in_flight == 8 and concurrency_trace(call.endpoint)["final"] == 8


def test_adaptive_concurrency_off_keeps_the_cap(server):
    server.reset(latency_ms=20, fault_rate=0.5, faults=("429",), seed=1)
    results = _call(server, max_concurrency=4, adaptive_concurrency=False).run(_requests(40))
    assert all(r.error is None for r in results) and concurrency_trace(_call(server).endpoint) is None


# --- The AIMD rule itself, without a server --------------------------------------------------------------


def test_one_decrease_per_episode_and_one_more_slot_per_round_trip_of_successes(monkeypatch):
    from lakesynth.llm import throttle

    now = [100.0]
    monkeypatch.setattr(throttle.time, "monotonic", lambda: now[0])
    state = AdaptiveConcurrency(16)
    state.throttled(0, retry_after=None)
    assert state.limit == 12 and state.epoch == 1  # a quarter fewer
    state.throttled(0, retry_after=None)  # sent before the decrease: the same episode
    state.throttled(1, retry_after=None)  # within the cooldown
    assert state.limit == 12 and state.throttles == 3
    now[0] += throttle.COOLDOWN_S
    state.throttled(1, retry_after=5.0)
    assert state.limit == 9
    now[0] += 1.0
    state.throttled(2, retry_after=None)  # the server asked for 5 s: still the same episode
    assert state.limit == 9
    for _ in range(8):
        state.succeeded(2)
    state.throttled(2, retry_after=None)  # a throttle restarts the count of successes in a row
    for _ in range(8):
        state.succeeded(2)
    state.succeeded(1)  # sent under the old limit: not counted
    assert state.limit == 9
    state.succeeded(2)
    assert state.limit == 10
    for _ in range(100):
        state.succeeded(2)
    assert state.limit == 16  # never above the cap
    for _ in range(20):
        now[0] += 10
        state.throttled(state.epoch, retry_after=None)
    assert state.limit == 1  # never below 1
    summary = state.summary()
    assert (summary["min"], summary["max"], summary["final"]) == (1, 16, 1)
    assert summary["trace"][0] == [0.0, 16] and summary["trace"][-1][1] == 1


def test_a_stage_under_30_percent_429s_writes_every_row_and_its_summary_shows_the_concurrency(llm_cfg, teacher_server):
    """Through the whole stage (the local ai_query path): no row error, the trace of the limit in the summary."""
    from conftest import ROOT

    from lakesynth import pipeline

    teacher_server.reset(latency_ms=20, fault_rate=0.3, faults=("429",), retry_after_ms=(50, 200), seed=8)
    summary = pipeline.run(llm_cfg, ["seed", "questions"], root=ROOT)
    questions = summary["stages"]["questions"]
    assert questions["status"] == "ok" and questions["errors"] == 0, questions
    trace = questions["concurrency"]
    assert trace["throttles"] > 0 and trace["decreases"] >= 1 and trace["min"] < trace["cap"]
    assert teacher_server.stats.requests > questions["rows_in"]  # the throttled ones were asked again
