"""Databricks auth on the executors: headers from databricks-sdk per request, a refused token renewed once."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from test_llm import Questions, _requests

from lakesynth import llm
from lakesynth.config import EndpointSettings
from lakesynth.errors import EndpointError
from lakesynth.llm.auth import Auth
from lakesynth.llm.standin import StandIn

TOKEN = "dapi-test-token"


@pytest.fixture
def workspace(monkeypatch):
    """The stand-in as a Databricks workspace: it answers at <host>/serving-endpoints/chat/completions."""
    server = StandIn().start()
    host = server.base_url.removesuffix("/v1")
    monkeypatch.setenv("DATABRICKS_HOST", host)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    yield server, host
    server.stop()


def _call(teacher: EndpointSettings) -> llm.Call:
    with llm.open_endpoint(teacher) as endpoint:
        return llm.Call(endpoint, teacher, Questions, temperature=0.5, max_tokens=256)


def _teacher() -> EndpointSettings:
    return EndpointSettings(base_url="databricks", model="standin", max_retries=0, timeout_s=5)


def test_an_expired_token_is_renewed_and_the_request_sent_once_more(workspace):
    server, host = workspace
    call = _call(_teacher())
    assert call.endpoint.base_url == f"{host}/serving-endpoints" and call.endpoint.databricks_auth
    server.reset(api_key=TOKEN, expire_first=1)
    llm.preflight(call, _requests(1))
    server.reset(api_key=TOKEN, expire_first=1)
    (result,) = call.run(_requests(1))
    assert result.error is None and result.attempts == 1
    assert server.stats.requests == 2


def test_a_token_refused_twice_stops_the_stage_and_never_prints(workspace):
    server, _ = workspace
    call = _call(_teacher())
    server.reset(api_key="the-right-key")
    for run in (lambda: llm.preflight(call, _requests(1)), lambda: call.run(_requests(1))):
        with pytest.raises(EndpointError, match="answered 401") as info:
            run()
        assert TOKEN not in str(info.value)
    assert server.stats.requests == 4  # each sent twice: the token renewed once


def test_the_executors_own_credentials_win_over_the_drivers_token(workspace, monkeypatch):
    server, _ = workspace
    call = _call(_teacher())  # the driver's token: TOKEN
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-renewed-token")
    server.reset(api_key="dapi-renewed-token")
    assert call.run(_requests(2))[0].error is None
    auth = Auth(call.endpoint, 5)
    auth.header()
    assert auth.redact("dapi-renewed-token and dapi-test-token") == "[REDACTED] and [REDACTED]"


def test_without_credentials_on_the_executor_the_drivers_token_is_used(workspace, monkeypatch):
    server, host = workspace
    monkeypatch.delenv("DATABRICKS_HOST")
    monkeypatch.delenv("DATABRICKS_TOKEN")
    endpoint = llm.Endpoint(f"{host}/serving-endpoints", "standin", SecretStr(TOKEN), databricks_auth=True)
    server.reset(api_key=TOKEN)
    results = llm.Call(endpoint, _teacher(), Questions, temperature=0.5, max_tokens=256).run(_requests(2))
    assert all(r.error is None for r in results)
