"""The LLM layer against the stand-in server (and once against the real embedded teacher)."""

from __future__ import annotations

import os
import socket

import pytest
from pydantic import BaseModel, ConfigDict

from lakesynth import llm
from lakesynth.config import TeacherConfig
from lakesynth.errors import ConfigError, EndpointError
from lakesynth.standin import StandIn, StandInOptions

SECRET = "sk-planted-SECRET-4242"


class Questions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reasoning: str
    questions: list[str]


def _call(server: StandIn, tmp_path=None, **teacher) -> llm.Call:
    cfg = TeacherConfig(base_url=server.base_url, model="standin", **{"max_retries": 3, "timeout_s": 5, **teacher})
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
    assert retried and all(r.error is None or r.attempts == 4 for r in results)
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
    results = _call(server, max_retries=8).run(_requests(40))
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


def test_overlapping_batches_stay_under_one_cap_and_one_journal_file(server, tmp_path):
    server.reset(latency_ms=30)
    batches = [_requests(60)[i : i + 20] for i in range(0, 60, 20)]
    out = list(_call(server, tmp_path, max_concurrency=8).run_batches(batches))
    assert [r.key for batch in out for r in batch] == [f"row-{i}" for i in range(60)]
    assert 1 < server.stats.max_in_flight <= 8
    assert len(list((tmp_path / "journal").glob("*.jsonl"))) == 1


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
        llm.Endpoint(server.base_url, "standin", llm.SecretStr(SECRET)),
        call.teacher,
        Questions,
        temperature=0.5,
        max_tokens=256,
    )
    with pytest.raises(EndpointError, match=match) as info:
        call.run(_requests(3))
    assert SECRET not in str(info.value)


def test_unreachable_endpoint_raises_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    call = llm.Call(llm.Endpoint(url, "m"), TeacherConfig(base_url=url, max_retries=1), Questions, 0.5, 64)
    with pytest.raises(EndpointError, match=f"cannot reach the teacher at {url}"):
        call.run(_requests(2))


def test_key_comes_from_named_env_var_and_never_prints(monkeypatch):
    monkeypatch.setenv("LAKESYNTH_TEST_KEY", SECRET)
    teacher = TeacherConfig(base_url="http://127.0.0.1:9/v1", api_key_env="LAKESYNTH_TEST_KEY")
    with llm.open_endpoint(teacher) as endpoint:
        assert endpoint.api_key.get_secret_value() == SECRET
        assert SECRET not in repr(endpoint) and SECRET not in str(endpoint)
    monkeypatch.delenv("LAKESYNTH_TEST_KEY")
    with pytest.raises(ConfigError, match="LAKESYNTH_TEST_KEY is not set"), llm.open_endpoint(teacher):
        pass


def test_cost_estimate_only_where_prices_are_configured():
    priced = TeacherConfig(price_per_million_prompt_tokens=1.0, price_per_million_completion_tokens=4.0)
    assert llm.cost(1000, 500, priced) == pytest.approx(0.003)
    assert llm.cost(1000, 500, TeacherConfig()) is None


def test_embedded_teacher_answers_a_structured_request(tmp_path):
    """The real packaged model, no endpoint configured: a valid object comes back."""
    teacher = TeacherConfig(embedded_slots=2, embedded_context=2048)
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
                            "content": "Topic: bank cards. Seed: How do I block my card? Briefly reason, then write 2 new short customer "
                            "questions on the same topic. Reply as JSON with keys reasoning and questions.",
                        }
                    ],
                )
            ]
        )
    assert result.error is None, (result.error, result.raw_output)
    parsed = Questions.model_validate(result.output)
    assert parsed.questions and all(q.strip() for q in parsed.questions)
    assert result.completion_tokens > 0


def test_databricks_endpoint_uses_unified_auth_and_hides_the_token():
    os.environ.update({"DATABRICKS_HOST": "https://dbc-0123.cloud.databricks.com", "DATABRICKS_TOKEN": SECRET})
    teacher = TeacherConfig(base_url="databricks", model="databricks-meta-llama-3-3-70b-instruct", timeout_s=1)
    with llm.open_endpoint(teacher) as endpoint:
        assert endpoint.base_url == "https://dbc-0123.cloud.databricks.com/serving-endpoints"
        assert endpoint.model == "databricks-meta-llama-3-3-70b-instruct"
        assert endpoint.api_key.get_secret_value() == SECRET and SECRET not in repr(endpoint)
