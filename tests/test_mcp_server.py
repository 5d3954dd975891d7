"""Tools from an MCP server: a local server, started by the test over stdio with the mcp SDK, serves three tools
(one answers, one hangs, one raises); the tools job lists, generates, executes and verifies through it."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from conftest import ROOT, where, write

from lakesynth import pipeline
from lakesynth.core import tables
from lakesynth.errors import ConfigError, SeedError
from lakesynth.tools import call_execution, call_generation, call_verdicts, mcp_server, tools

SERVER = '''"""A bank's tools over MCP: one answers, one never does, one raises. Over stdio, or with `http PORT` over
Streamable HTTP, answering only requests that carry the bearer token of $BANK_TOKEN."""
import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("bank", log_level="CRITICAL")  # quiet, and no traceback to render before an error reply


@server.tool()
def get_balance(account_id: str) -> dict:
    """The balance of an account."""
    return {"account_id": account_id, "balance": 1520.4}


@server.tool()
def wait_for_settlement(transfer_id: str) -> str:
    """Wait until a transfer settles."""
    time.sleep(600)
    return transfer_id


@server.tool()
def check_fraud(card_last_digits: str) -> str:
    """Ask the fraud service about a card."""
    raise RuntimeError("the fraud service is down")


def guarded(app):
    async def asgi(scope, receive, send):
        headers = dict(scope.get("headers") or [])
        if scope["type"] == "http" and headers.get(b"authorization") != f"Bearer {os.environ['BANK_TOKEN']}".encode():
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await app(scope, receive, send)

    return asgi


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        import uvicorn

        uvicorn.run(guarded(server.streamable_http_app()), host="127.0.0.1", port=int(sys.argv[2]), log_level="error")
    else:
        server.run()
'''

# Each tool, a query that calls it, and the verdict its rows get.
PAIRS = {
    "get_balance": ("What is the balance of account A-1?", {"account_id": "A-1"}, None),
    "wait_for_settlement": ("Has transfer T-9 settled?", {"transfer_id": "T-9"}, "execution:Timeout"),
    "check_fraud": ("Is my card ending 4821 flagged?", {"card_last_digits": "4821"}, "execution:ToolError"),
}
STAGES = ["tools", "call_generation", "calls", "call_format", "call_execution", "call_semantic", "call_verdicts"]


def _jsonl(path, ids):
    lines = [
        {"id": f"{prefix}-{name}", "query": query, "function_calls": [{"function_name": name, "arguments": args}]}
        for prefix in ids
        for name, (query, args, _) in PAIRS.items()
    ]
    return write(path, "".join(json.dumps(x) + "\n" for x in lines))


def _listed(server_file: str) -> dict:
    """The server's own listing, in process (no stdio): what the tools table must hold, unchanged."""
    spec = importlib.util.spec_from_file_location("mcp_bank_server", server_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def listing():
        from mcp import Client

        async with Client(module.server) as client:
            return (await client.list_tools()).tools

    return {t.name: t for t in anyio.run(listing)}


def test_the_tools_job_lists_generates_executes_and_verifies_through_an_mcp_server(
    spark, llm_cfg, teacher_server, tmp_path
):
    server_file = write(tmp_path / "bank_server.py", SERVER)
    t = llm_cfg.tools
    cfg = llm_cfg.model_copy(
        update={
            "tools": t.model_copy(
                update={
                    "spec": f"mcp:{sys.executable} {server_file}",
                    "functions": "",
                    "calls": _jsonl(tmp_path / "calls.jsonl", ["given"]),
                    "seeds": _jsonl(tmp_path / "seeds.jsonl", ["seed"]),
                    "generation": t.generation.model_copy(update={"per_function": 1, "mix": {"simple": 1.0}}),
                    "execution": t.execution.model_copy(update={"timeout_s": 2.0}),
                }
            )
        }
    )
    summary = pipeline.run(cfg, STAGES, job="lakesynth_tools", root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]

    # Listed: each tool's name, description and inputSchema as the server defines them.
    listed = _listed(server_file)
    rows = {r.name: r for r in tables.read(spark, where(cfg), tools.TABLE).collect()}
    assert set(rows) == set(PAIRS) == set(listed)
    for name, row in rows.items():
        assert json.loads(row.parameters) == listed[name].input_schema
        assert row.description == listed[name].description and row.implemented
        assert row.module == cfg.tools.spec and row.source == cfg.tools.spec

    # Generated: one pair per tool, by the stand-in teacher, decoded against the listed schemas.
    generated = tables.read(spark, where(cfg), call_generation.TABLE).collect()
    assert sorted(g.function for g in generated) == sorted(PAIRS)
    assert all(g.error is None and json.loads(g.calls)[0]["name"] in PAIRS for g in generated)

    # Executed and verified: every row by the tool it calls; the hang and the error fail only their own rows.
    verdicts = tables.read(spark, where(cfg), call_verdicts.TABLE).collect()
    assert len(verdicts) == 2 * len(PAIRS)
    for v in verdicts:
        calls = json.loads(v.calls)
        name = calls[0]["name"]
        expected = PAIRS[name][2]
        results = json.loads(v.execution_results)
        assert (v.drop_reason if expected else v.execution) == (expected or "passed"), (v.source_id, results)
        if name == "get_balance":
            assert results[0]["result"] == {"account_id": calls[0]["arguments"]["account_id"], "balance": 1520.4}
            assert v.semantic_model == "standin"  # judged, with the server's result
        elif name == "wait_for_settlement":
            assert results[0]["error"] == "Timeout: no result within 2 s" and not v.keep
        else:
            assert results[0]["error"] == "ToolError: Error executing tool check_fraud" and not v.keep
    failing = sum(PAIRS[json.loads(v.calls)[0]["name"]][2] is not None for v in verdicts)
    assert summary["stages"]["call_verdicts"]["execution"]["failed"] == failing >= 2  # the given hang and error

    # A rerun against the same listing calls nothing again.
    again = pipeline.run(cfg, ["tools", "call_execution"], job="lakesynth_tools", root=ROOT)
    assert again["stages"]["call_execution"]["rows_out"] == 0
    assert tables.read(spark, where(cfg), call_execution.TABLE).count() == 2 * len(PAIRS)


def test_an_mcp_flag_and_key_are_kept_as_given_and_a_missing_server_is_named(tmp_path):
    from lakesynth import cli
    from lakesynth.config import packaged_config

    spec = "mcp:python server.py --port 0"
    args = cli.parse_args(["run", "--config", str(packaged_config()), "--tools", spec])
    cfg, line = cli.configure(args, ["tools", "call_generation", "calls"])
    assert cfg.tools.spec == spec and line.startswith(f"sources --tools {spec};")
    assert cfg.tools.mcp.cwd == str(Path.cwd())  # a command typed here runs here, not in the config's folder
    assert tools.implementations(cfg) == spec and cfg.tools.functions == ""  # the server runs its own tools
    # A server runs only its own listing: as the implementations of another spec it could never be checked.
    args = cli.parse_args(["run", "--config", str(packaged_config()), "--functions", spec])
    with pytest.raises(ConfigError) as refused:
        cli.configure(args, ["tools", "call_generation", "calls"])
    assert str(refused.value).endswith(
        f"--set tools.functions: Value error, an MCP server runs the tools it lists: give it as tools.spec "
        f"(--tools {spec}), not as tools.functions, which takes a file (got {spec!r})"
    )
    missing = f"mcp:{tmp_path / 'no-such-server'}"
    with pytest.raises(SeedError, match=f"{missing}: cannot use the MCP server: FileNotFoundError"):
        tools.read(cfg.model_copy(update={"tools": cfg.tools.model_copy(update={"spec": missing})}))
    # Calls checked against one listing are never run on a server that now lists other tools.
    changed = f"mcp:{sys.executable} {write(tmp_path / 'bank_server.py', SERVER)}"
    with pytest.raises(SeedError, match="the server's tools changed since they were listed: run the tools stage"):
        mcp_server.McpTools(changed, cfg.tools.mcp, listing_sha="0" * 16).start()


WHERE_SERVER = '''"""A stdio server that says where it runs and which of the test's variables it was given."""
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("where", log_level="CRITICAL")


@server.tool()
def where() -> dict:
    """The server's working folder and variables."""
    return {"cwd": os.getcwd(), "given": os.environ.get("WHERE_GIVEN"), "other": os.environ.get("WHERE_OTHER")}


if __name__ == "__main__":
    server.run()
'''


def test_a_stdio_server_runs_in_the_configs_folder_with_the_variables_it_names(tmp_path, monkeypatch):
    from lakesynth.core import registry

    conf = tmp_path / "conf"
    write(conf / "where_server.py", WHERE_SERVER)
    config = f"tools:\n  spec: mcp:{sys.executable} where_server.py\n  mcp:\n    env: [WHERE_GIVEN]\n"
    cfg = registry.load_config(write(conf / "lakesynth.yml", config))
    assert (cfg.tools.mcp.cwd, cfg.tools.mcp.env) == (str(conf), ["WHERE_GIVEN"])
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative server file is found in the config's folder all the same
    monkeypatch.setenv("WHERE_OTHER", "not passed on")
    with pytest.raises(ConfigError, match="^tools.mcp.env: environment variable.s. WHERE_GIVEN not set$"):
        mcp_server.McpTools(cfg.tools.spec, cfg.tools.mcp).start()
    monkeypatch.setenv("WHERE_GIVEN", "passed on")
    with mcp_server.McpTools(cfg.tools.spec, cfg.tools.mcp, timeout_s=10) as server:
        (outcome,) = server.run([("where", {})])
    assert json.loads(outcome.result) == {"cwd": str(conf), "given": "passed on", "other": None}


@pytest.fixture
def http_server(tmp_path):
    """The bank's server over Streamable HTTP on a free port, guarded by a bearer token: (URL, token)."""
    token, port = "s3cret-token-value", _free_port()
    server_file = write(tmp_path / "bank_server.py", SERVER)
    env = {**os.environ, "BANK_TOKEN": token}
    process = subprocess.Popen([sys.executable, server_file, "http", str(port)], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp", token
    finally:
        process.kill()  # its hung call would hold a graceful shutdown
        process.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_http_server_is_listed_and_called_with_the_token_of_its_variable_never_shown(http_server, monkeypatch):
    url, token = http_server
    settings = mcp_server.McpConfig(token_env="LAKESYNTH_TEST_MCP_TOKEN", connect_timeout_s=10)
    with pytest.raises(ConfigError, match="tools.mcp.token_env: environment variable LAKESYNTH_TEST_MCP_TOKEN"):
        mcp_server.McpTools(f"mcp:{url}", settings).start()
    monkeypatch.setenv("LAKESYNTH_TEST_MCP_TOKEN", token)
    with mcp_server.McpTools(f"mcp:{url}", settings, timeout_s=2) as server:
        assert [t["name"] for t in server.tools] == list(PAIRS)
        balance, hang, error = server.run([(name, args) for _, args, _ in PAIRS.values() for name in [_name(args)]])
    assert json.loads(balance.result) == {"account_id": "A-1", "balance": 1520.4}
    assert (
        hang.error == "Timeout: no result within 2 s" and error.error == "ToolError: Error executing tool check_fraud"
    )
    # A wrong token is refused; the error names the server, never the token.
    monkeypatch.setenv("LAKESYNTH_TEST_MCP_TOKEN", "wrong-token-value")
    with pytest.raises(SeedError, match=f"mcp:{url}: cannot use the MCP server") as refused:
        mcp_server.McpTools(f"mcp:{url}", settings).start()
    assert "wrong-token-value" not in str(refused.value) and refused.value.__cause__ is None
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        mcp_server.McpConfig(token_env="Bearer abc.def")


def _name(arguments: dict) -> str:
    return next(name for name, (_, args, _) in PAIRS.items() if args == arguments)


CRASHING = '''import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("crashing", log_level="CRITICAL")


@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
def shut_down(code: int) -> str:
    """Kill the server."""
    os._exit(code)


if __name__ == "__main__":
    server.run()
'''


def test_a_call_that_kills_the_server_fails_only_its_own_row(tmp_path):
    spec = f"mcp:{sys.executable} {write(tmp_path / 'crashing.py', CRASHING)}"
    with mcp_server.McpTools(spec, mcp_server.McpConfig(), timeout_s=10, concurrency=2) as server:
        first, crash, last = server.run([("echo", {"text": "a"}), ("shut_down", {"code": 3}), ("echo", {"text": "b"})])
        # A str result: the SDK's server wraps it as {"result": ...} (its output schema says so); stored bare, as the
        # sandbox stores what the same function returns.
        assert [json.loads(o.result) for o in (first, last)] == ["a", "b"]
        assert crash.error.startswith("Crash: the MCP server closed the connection") and crash.result is None
        assert server.run([("echo", {"text": "c"})])[0].ok  # on a restarted server
