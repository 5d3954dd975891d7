"""The LLM layer against the stand-in server (and once against the real embedded teacher)."""

from __future__ import annotations

import json
import socket

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from lakesynth import llm
from lakesynth.config import EndpointSettings
from lakesynth.errors import ConfigError, EndpointError
from lakesynth.llm.standin import StandIn, StandInOptions

SECRET = "sk-planted-SECRET-4242"


class Questions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reasoning: str
    questions: list[str]


def _call(server: StandIn, tmp_path=None, **teacher) -> llm.Call:
    settings = {"max_retries": 3, "timeout_s": 5, "throttle_patience_s": 0, **teacher}  # patience: see test_throttling
    cfg = EndpointSettings(base_url=server.base_url, model="standin", **settings)
    return llm.Call(
        llm.Endpoint(server.base_url, "standin"),
        cfg,
        Questions,
        temperature=0.5,
        max_tokens=256,
        journal_dir=str(tmp_path / "journal") if tmp_path else None,
    )


def _requests(n: int) -> list[tuple[str, list[dict]]]:
    return [(f"row-{i}", [{"role": "user", "content": f"Write questions about topic {i}"}]) for i in range(n)]


@pytest.fixture
def server():
    s = StandIn(StandInOptions()).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def fresh_concurrency():
    """Each test's endpoints start at their cap: a port can come back in a later test, with the throttles of
    an earlier one."""
    from lakesynth.llm.throttle import reset_concurrency

    reset_concurrency()
    yield
    reset_concurrency()


def test_structured_results_are_validated_objects_with_accounting(server):
    results = _call(server).run(_requests(5))
    assert [r.key for r in results] == [f"row-{i}" for i in range(5)]
    for r in results:
        assert r.error is None and Questions.model_validate(r.output).questions
        assert r.prompt_tokens > 0 and r.completion_tokens > 0 and r.attempts == 1 and r.model == "standin"
        assert len(r.fingerprint) == 64


def test_every_row_done_or_erred_under_20_percent_faults_of_every_kind(server, tmp_path):
    server.reset(fault_rate=0.2, seed=7, timeout_sleep_s=1.0)
    results = _call(server, tmp_path, timeout_s=0.4, max_concurrency=64).run(_requests(500))
    keys = [r.key for r in results]
    assert len(keys) == 500 and len(set(keys)) == 500  # none missing, none duplicated
    assert all((r.error is None) == (r.output is not None) for r in results)
    assert sum(r.error is None for r in results) >= 490
    assert set(server.stats.faults) == {"429", "500", "timeout", "malformed", "schema", "truncated"}
    retried = [r for r in results if r.attempts > 1]
    assert retried and all(r.error is None or r.attempts >= 4 for r in results)  # throttled attempts on top
    for r in results:
        if r.error:
            assert r.error.split(":")[0] in {
                "RateLimitError",
                "InternalServerError",
                "APITimeoutError",
                "InvalidOutput",
            }


def test_invalid_output_is_kept_raw_after_retries(server):
    server.reset(fault_rate=1.0, faults=("schema",))
    (result,) = _call(server, max_retries=2).run(_requests(1))
    assert result.attempts == 3 and result.output is None
    assert result.error.startswith("InvalidOutput: output did not match Questions")
    assert '"unexpected"' in result.raw_output


def test_truncated_reply_is_an_error_not_a_row(server):
    server.reset(fault_rate=1.0, faults=("truncated",))
    (result,) = _call(server, max_retries=0).run(_requests(1))
    assert "cut at max_tokens=256" in result.error and result.raw_output


def test_retry_after_is_honoured_and_429_recovers(server):
    server.reset(fault_rate=0.5, faults=("429",), seed=3)
    results = _call(server, max_retries=0).run(_requests(40))  # a throttle spends its own budget, not max_retries
    assert all(r.error is None for r in results) and server.stats.faults["429"] > 0


def test_journal_makes_a_rerun_free(server, tmp_path):
    call = _call(server, tmp_path)
    first = call.run(_requests(20))
    server.reset()
    again = call.run(_requests(20))
    assert server.stats.requests == 0
    assert [r.output for r in again] == [r.output for r in first] and all(r.from_journal for r in again)
    changed = llm.Call(
        call.endpoint, call.teacher, Questions, temperature=0.9, max_tokens=256, journal_dir=call.journal_dir
    )
    changed.run(_requests(20))
    assert server.stats.requests == 20  # a changed parameter regenerates


def test_concurrency_is_bounded(server):
    server.reset(latency_ms=30)
    _call(server, max_concurrency=5).run(_requests(40), workers=1)
    assert 1 < server.stats.max_in_flight <= 5


def test_batches_share_one_pool_and_keep_it_busy_while_the_caller_works(server):
    """The engine's batches: results per batch, in order, under one concurrency cap; while the caller
    is busy (the engine preparing the next batch), requests of the batch already taken keep going."""
    import time

    server.reset(latency_ms=50)
    sizes = [7, 30, 1, 12]
    sent_while_caller_slept = []

    def batches():
        offset = 0
        for size in sizes:
            yield _requests(offset + size)[offset:]
            offset += size
            before = server.stats.requests
            time.sleep(0.3)  # the caller is slow to hand over the next batch
            sent_while_caller_slept.append(server.stats.requests - before)

    out = list(_call(server, max_concurrency=8).run_batches(batches()))
    assert [len(r) for r in out] == sizes
    assert [r.key for batch in out for r in batch] == [f"row-{i}" for i in range(sum(sizes))]
    assert all(r.error is None for batch in out for r in batch)
    assert 1 < server.stats.max_in_flight <= 8
    # Batch 2 (30 requests, 8 at a time, 50 ms each) went on while the caller slept before batch 3.
    assert sent_while_caller_slept[1] >= 8
    assert server.stats.requests == sum(sizes)


def _journal_files(tmp_path) -> dict:
    """Each journal file's name and bytes, after checking that it holds only whole JSON lines."""
    files = {p.name: p.read_bytes() for p in (tmp_path / "journal").glob("*.jsonl")}
    for data in files.values():
        assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())
    return files


def test_overlapping_batches_stay_under_one_cap_and_write_each_journal_file_once(server, tmp_path):
    server.reset(latency_ms=30)
    batches = [_requests(60)[i : i + 20] for i in range(0, 60, 20)]
    call = _call(server, tmp_path, max_concurrency=8, journal_flush_s=60)
    out = list(call.run_batches(batches))
    assert [r.key for batch in out for r in batch] == [f"row-{i}" for i in range(60)]
    assert 1 < server.stats.max_in_flight <= 8
    first = _journal_files(tmp_path)
    assert 1 <= len(first) <= 3  # a long interval: a file per batch end at most (the batches overlap)
    assert sum(data.count(b"\n") for data in first.values()) == 60
    list(call.run_batches([_requests(70)[60:]]))
    after = _journal_files(tmp_path)
    assert len(after) == len(first) + 1 and all(after[name] == data for name, data in first.items())


def test_journal_flush_0_writes_a_file_per_request_and_a_rerun_pays_nothing(server, tmp_path):
    call = _call(server, tmp_path, journal_flush_s=0)
    first = call.run(_requests(5))
    assert sorted(data.count(b"\n") for data in _journal_files(tmp_path).values()) == [1] * 5
    server.reset()
    assert [r.output for r in call.run(_requests(5))] == [r.output for r in first]
    assert server.stats.requests == 0


def _pool_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("lakesynth-")]


def test_a_fatal_error_or_an_early_stop_leaves_no_thread_behind(server):
    stream = _call(server).run_batches([_requests(3), _requests(3), _requests(3)])
    assert len(next(stream)) == 3 and _pool_threads()
    stream.close()  # the consumer stops early: what is still out is cancelled
    assert not _pool_threads()

    def failing_input():
        yield _requests(3)
        raise ValueError("the engine's input broke")

    with pytest.raises(ValueError, match="input broke"):
        list(_call(server).run_batches(failing_input()))
    assert not _pool_threads()

    server.reset(api_key="the-right-key")
    with pytest.raises(EndpointError, match="401"):
        list(_call(server).run_batches([_requests(3), _requests(3)]))
    assert not _pool_threads()


@pytest.mark.parametrize(
    "options, match",
    [
        ({"api_key": "the-right-key"}, "answered 401: the token or API key is missing, wrong or expired"),
        ({"models": ("other-model",)}, "answered 404: no model or endpoint named 'standin'"),
        ({"reject_schema": True}, "answered 400: .*response_format json_schema"),
    ],
)
def test_endpoint_level_failures_raise_clearly(server, options, match):
    server.reset(**options)
    call = _call(server)
    call = llm.Call(
        llm.Endpoint(server.base_url, "standin", SecretStr(SECRET)),
        call.teacher,
        Questions,
        temperature=0.5,
        max_tokens=256,
    )
    with pytest.raises(EndpointError, match=match) as info:
        llm.preflight(call, _requests(1))
    assert SECRET not in str(info.value)
    if "reject_schema" not in options:  # 401 and 404 stop the main run too; a 400 there is its row's (see below)
        with pytest.raises(EndpointError, match=match) as info:
            call.run(_requests(3))
        assert SECRET not in str(info.value)


def test_unreachable_endpoint_raises_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    call = llm.Call(llm.Endpoint(url, "m"), EndpointSettings(base_url=url, max_retries=1), Questions, 0.5, 64)
    with pytest.raises(EndpointError, match=f"cannot reach the teacher at {url}"):
        call.run(_requests(2))


def test_key_comes_from_named_env_var_and_never_prints(monkeypatch):
    monkeypatch.setenv("LAKESYNTH_TEST_KEY", SECRET)
    teacher = EndpointSettings(base_url="http://127.0.0.1:9/v1", api_key_env="LAKESYNTH_TEST_KEY")
    with llm.open_endpoint(teacher) as endpoint:
        assert endpoint.api_key.get_secret_value() == SECRET
        assert SECRET not in repr(endpoint) and SECRET not in str(endpoint)
    monkeypatch.delenv("LAKESYNTH_TEST_KEY")
    with pytest.raises(ConfigError, match="LAKESYNTH_TEST_KEY is not set"), llm.open_endpoint(teacher):
        pass


def test_cost_estimate_only_where_prices_are_configured():
    priced = EndpointSettings(price_per_million_prompt_tokens=1.0, price_per_million_completion_tokens=4.0)
    assert priced.cost(1000, 500) == pytest.approx(0.003)
    assert EndpointSettings().cost(1000, 500) is None


@pytest.mark.slow
def test_embedded_teacher_answers_a_structured_request(tmp_path):
    """The real packaged model, no endpoint configured: a valid object comes back."""
    teacher = EndpointSettings(
        embedded_slots=2, embedded_context=2048, embedded_threads=1
    )  # no spinning beside the other worker
    with llm.open_endpoint(teacher) as endpoint:
        assert endpoint.base_url.startswith("http://127.0.0.1:")
        call = llm.Call(endpoint, teacher, Questions, temperature=0.2, max_tokens=400)
        (result,) = call.run(
            [
                (
                    "seed",
                    [
                        {
                            "role": "user",
                            "content": "Topic: bank cards. Seed: How do I block my card? Briefly reason, then write 2 "
                            "new short customer questions on the same topic. Reply as JSON with keys reasoning "
                            "and questions.",
                        }
                    ],
                )
            ]
        )
    assert result.error is None, (result.error, result.raw_output)
    parsed = Questions.model_validate(result.output)
    assert parsed.questions and all(q.strip() for q in parsed.questions)
    assert result.completion_tokens > 0


def test_databricks_endpoint_uses_unified_auth_and_hides_the_token(monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", "https://dbc-0123.cloud.databricks.com")
    monkeypatch.setenv("DATABRICKS_TOKEN", SECRET)
    teacher = EndpointSettings(base_url="databricks", model="databricks-meta-llama-3-3-70b-instruct", timeout_s=1)
    with llm.open_endpoint(teacher) as endpoint:
        assert endpoint.base_url == "https://dbc-0123.cloud.databricks.com/serving-endpoints"
        assert endpoint.model == "databricks-meta-llama-3-3-70b-instruct"
        assert endpoint.api_key.get_secret_value() == SECRET and SECRET not in repr(endpoint)


# --- Output model -> Spark DDL --------------------------------------------------------------------


class Answer(BaseModel):
    reasoning: str
    answer: str


class Scored(BaseModel):
    label: str | None
    score: float
    votes: int
    kept: bool
    tags: list[str]
    parts: list[Answer]
    best: Answer | None = None


def test_spark_ddl_and_response_format_come_from_the_model():
    assert llm.spark_ddl(Answer) == "reasoning STRING, answer STRING"
    assert llm.response_format(Answer) == "STRUCT<response: STRUCT<reasoning: STRING, answer: STRING>>"
    assert llm.spark_ddl(Scored) == (
        "label STRING, score DOUBLE, votes BIGINT, kept BOOLEAN, tags ARRAY<STRING>, "
        "parts ARRAY<STRUCT<reasoning: STRING, answer: STRING>>, best STRUCT<reasoning: STRING, answer: STRING>"
    )


def test_a_field_with_no_spark_type_is_named():
    class Loose(BaseModel):
        answer: str
        extra: dict[str, int]

    with pytest.raises(ConfigError, match="Loose.extra: type dict"):
        llm.spark_ddl(Loose)
    with pytest.raises(ConfigError, match="Loose.extra"):
        llm.response_format(Loose)


def test_local_ai_query_checks_its_response_format_against_the_model(spark, server):
    import pandas as pd

    udf = llm.ai_query_udf(
        llm.Call(llm.Endpoint(server.base_url, "standin"), EndpointSettings(), Answer, 0.1, 64, label="answers"),
        workers=1,
    )
    params = pd.DataFrame({"max_tokens": [64], "temperature": [0.1]})
    args = (pd.Series(["standin"]), pd.Series(["What is a card?"]), params)
    out = udf.func(*args, pd.Series([llm.response_format(Answer)]), pd.Series([False]))
    assert out.errorMessage.isna().all() and Answer.model_validate_json(out.result[0]).answer
    with pytest.raises(ConfigError, match="does not describe the output of answers"):
        udf.func(*args, pd.Series(["STRUCT<response: STRUCT<answer: STRING>>"]), pd.Series([False]))


# --- Every failure of one request stays in its row ------------------------------------------------


@pytest.mark.parametrize(
    "fault, error, attempts",
    [
        ("422", 'UnprocessableEntityError: HTTP 422: [{"loc"', 1),
        ("413", "RequestTooLargeError: HTTP 413 invalid_request_error: Request entity too large", 1),
        ("400_context", "BadRequestError: HTTP 400 context_length_exceeded: This model's maximum context length", 1),
        ("409", "ConflictError: HTTP 409 conflict: Conflict", 3),
        ("429", "throttled: RateLimitError: HTTP 429: rate limited", 3),
        ("503_retry_after", "throttled: InternalServerError: HTTP 503: the endpoint is overloaded", 3),
        ("500", "InternalServerError: HTTP 500: internal error", 3),
        ("reset", "APIConnectionError: ", 3),
        ("malformed", "InvalidOutput: output did not match Questions", 3),
    ],
)
def test_each_kind_of_failure_is_its_rows_error_retried_or_not(server, fault, error, attempts):
    server.reset(fault_rate=1.0, faults=(fault,))
    results = _call(server, max_retries=2, max_throttle_retries=2).run(_requests(4))
    assert [r.key for r in results] == [f"row-{i}" for i in range(4)]
    for r in results:
        assert r.output is None and r.error.startswith(error), r.error
        assert r.attempts == attempts and r.error.endswith(f"(after {attempts} attempt{'s' if attempts > 1 else ''})")
    assert server.stats.requests == 4 * attempts


def test_a_mix_of_row_failures_leaves_every_other_row_answered(server, tmp_path):
    server.reset(fault_rate=0.3, faults=("422", "409", "400_context", "413", "reset"), seed=5)
    results = _call(server, tmp_path, max_concurrency=16, max_retries=5).run(_requests(300))
    assert len({r.key for r in results}) == 300
    assert all((r.error is None) == (r.output is not None) for r in results)
    failed = [r for r in results if r.error]
    # The retried kinds (409, reset) recovered; the others are final at their first sight.
    assert {r.error.split(":")[0] for r in failed} == {
        "UnprocessableEntityError",
        "BadRequestError",
        "RequestTooLargeError",
    }
    assert any(r.attempts > 1 and r.error is None for r in results)  # 409s and resets were retried


def test_a_400_is_the_rows_in_the_main_run_and_the_endpoints_only_on_the_preflight(server):
    server.reset(reject_schema=True)
    results = _call(server, max_retries=3).run(_requests(2))
    assert all(r.error.startswith("BadRequestError: HTTP 400: response_format") and r.attempts == 1 for r in results)
    server.reset(fault_rate=1.0, faults=("400_context",))
    llm.preflight(_call(server), _requests(1))  # this row's prompt is too long: no reason to stop the stage


def test_server_messages_in_row_errors_are_redacted(server):
    server.reset(fault_rate=1.0, faults=("422",))
    call = _call(server)
    endpoint = llm.Endpoint(server.base_url, "standin", SecretStr("unprocessable"))
    call = llm.Call(endpoint, call.teacher, Questions, 0, 64)
    (result,) = call.run(_requests(1))
    assert "unprocessable" not in result.error and "[REDACTED]" in result.error


def test_a_huge_retry_after_is_capped(server, monkeypatch):
    import time

    from lakesynth.llm import retry

    monkeypatch.setattr(retry, "MAX_RETRY_AFTER_S", 0.2)
    server.reset(fault_rate=1.0, faults=("huge_retry_after",))
    started = time.monotonic()
    (result,) = _call(server, max_retries=0, max_throttle_retries=2).run(_requests(1))
    elapsed = time.monotonic() - started
    assert result.error.startswith("throttled: RateLimitError: HTTP 429") and result.attempts == 3
    assert 0.4 <= elapsed < 5.0


def test_backoff_honours_retry_after_up_to_the_cap_and_jitters():
    from lakesynth.llm import retry

    asked = retry.RetryableStatus(429, "slow down", (), retry_after=86400.0)
    waits = {retry.backoff(1, asked) for _ in range(20)}
    assert all(retry.MAX_RETRY_AFTER_S <= w <= 1.25 * retry.MAX_RETRY_AFTER_S for w in waits) and len(waits) > 1
    short = retry.RetryableStatus(429, "slow down", (), retry_after=0.5)
    assert all(0.5 <= retry.backoff(1, short) <= 0.625 for _ in range(20))
    plain = retry.RetryableStatus(503, "busy", ())
    assert all(0 <= retry.backoff(3, plain) <= 2.0 for _ in range(20))


def test_retry_after_and_error_bodies_are_read_in_every_common_shape():
    import email.utils
    import time

    import httpx2

    from lakesynth.llm import retry

    assert retry.retry_after(httpx2.Headers({"retry-after-ms": "20", "retry-after": "9"})) == pytest.approx(0.02)
    assert retry.retry_after(httpx2.Headers({"Retry-After": "7"})) == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry.retry_after(httpx2.Headers({"retry-after": later})) <= 31
    assert retry.retry_after(httpx2.Headers({"retry-after": "soon"})) is None
    assert retry.retry_after(httpx2.Headers({})) is None

    openai_body = (
        b'{"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}'
    )
    assert retry.error_detail(openai_body) == ("too long", ("context_length_exceeded", "invalid_request_error"))
    vllm_body = b'{"error": {"message": "bad", "type": "BadRequestError", "code": 400}}'
    assert retry.error_detail(vllm_body) == ("bad", ("BadRequestError",))
    databricks_body = b'{"error_code": "BAD_REQUEST", "message": "Input is too long."}'
    assert retry.error_detail(databricks_body) == ("Input is too long.", ("BAD_REQUEST",))
    assert retry.error_detail(b'{"detail": "Not Found"}') == ("Not Found", ())
    assert retry.error_detail(b"<html>bad gateway</html>") == ("<html>bad gateway</html>", ())


def test_connections_refused_mid_run_become_row_errors(server):
    """The endpoint answered, then went away: the rest of the rows carry the error, nothing raises."""
    import time

    def batches():
        yield _requests(5)
        deadline = time.monotonic() + 10
        while server.stats.completions < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()
        yield _requests(10)[5:]

    first, second = _call(server, max_retries=1).run_batches(batches())
    assert all(r.error is None for r in first)
    assert all(r.error.startswith("APIConnectionError: ") and r.attempts == 2 for r in second)


# --- One rate limit per endpoint, shared by every pool ----------------------------------------------


def test_rate_limit_reservations_hold_the_rate_across_threads():
    import threading

    from lakesynth.llm.pool import BURST_S, RateLimit

    limit = RateLimit(per_minute=6000, workers=1)  # 100 a second, one second's worth at once
    waits: list[float] = []

    def take() -> None:
        for _ in range(50):
            waits.append(limit.reserve())

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    waits.sort()
    assert sum(w == 0 for w in waits) == pytest.approx(100 * BURST_S, abs=3)
    assert waits[-1] == pytest.approx(200 / 100 - BURST_S, abs=0.05)  # the 200th goes after 2 s less the burst
    assert limit.reserve(amount=300) == pytest.approx(3.0 + 2.0 - BURST_S, abs=0.05)  # tokens: an amount each


def test_rate_limit_gives_each_pool_its_workers_share_up_to_the_whole():
    from lakesynth.llm.pool import BURST_S, RateLimit

    limit = RateLimit(per_minute=600, workers=2)
    limit.hold()  # one worker's pool in this process: half the stage's rate
    waits = [limit.reserve() for _ in range(11)]
    assert waits[-1] == pytest.approx(11 * 0.2 - BURST_S, abs=0.05)
    limit.hold()
    limit.hold()  # more pools than workers: still no more than the whole
    limit._paid_until = 0.0
    waits = [limit.reserve() for _ in range(21)]
    assert waits[-1] == pytest.approx(21 * 0.1 - BURST_S, abs=0.05)


def test_requests_per_minute_holds_across_batches_and_calls(server):
    """Two Calls on two threads, one of them over two batches, share the endpoint's one limit: at 600 a
    minute (10 a second, one second's worth at once) 30 requests take about two seconds, where pools with a
    limiter each would have sent them all at once."""
    import threading
    import time

    server.reset()
    first, second = _call(server, requests_per_minute=600), _call(server, requests_per_minute=600)
    out: dict[str, list] = {}
    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda: out.update(a=list(first.run_batches([_requests(10), _requests(20)[10:]])))),
        threading.Thread(target=lambda: out.update(b=second.run(_requests(30)[20:]))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert server.stats.requests == 30 and all(r.error is None for batch in out["a"] for r in batch)
    assert 1.8 <= elapsed < 6.0
