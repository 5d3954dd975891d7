"""Tools from an MCP server (`--tools mcp:<command or URL>`): its tools listed as OpenAI specs, and calls run
through it (`tools/call`) with the sandbox's outcomes, for the tools stage and the execution check.

`mcp:python server.py` starts the server as a subprocess and speaks to it over stdio, in the config file's folder
(`tools.mcp.cwd`) with the SDK's safe environment and the variables `tools.mcp.env` names; `mcp:https://...` (or
http) speaks Streamable HTTP. A tool's spec is the server's listing, unchanged: `name`, `description`, and its
`inputSchema` as the `parameters`. One client session serves a whole stage run, its calls sent `processes` at a
time; each call has the execution check's timeout. A call that times out, a result the server marks `isError`
(the tool raised) or any other failure of one call is that call's `Outcome`, never an exception: it fails only
its row, and the session goes on.

An http(s) server's bearer token comes from the environment variable `tools.mcp.token_env` names, or, with
`tools.mcp.databricks_auth`, from databricks-sdk's unified auth (a job's or notebook's identity, a profile, env
vars), renewed as the SDK renews it: Databricks' managed MCP servers (Unity Catalog functions at
`https://<workspace>/api/2.0/mcp/functions/<catalog>/<schema>`) are reached this way. The token is read where the
session opens and is redacted from every error and outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from typing_extensions import Self

from lakesynth.config import EnvName, Section, resolve_path, secret_from_env
from lakesynth.errors import ConfigError, SeedError

if TYPE_CHECKING:
    from lakesynth.tools.sandbox import Outcome

PREFIX = "mcp:"
CRASH = "Crash:"  # the error of a call the server died on, as the sandbox names a dead worker's


class McpConfig(Section):
    """How to reach an MCP server named by `--tools mcp:...`."""

    token_env: EnvName = Field(
        "", description="Environment variable holding the bearer token of an http(s) MCP server (its NAME)."
    )
    databricks_auth: bool = Field(
        False,
        description="Sign requests to an https MCP server with databricks-sdk unified auth (Databricks managed MCP).",
    )
    connect_timeout_s: float = Field(
        30.0, gt=0, description="Longest the server may take to start and answer the handshake or the tool listing."
    )
    env: list[EnvName] = Field(
        [],
        description="Environment variables (their NAMES) passed on to a stdio server, which otherwise gets only the "
        "MCP SDK's safe defaults (HOME, PATH, USER ...): e.g. [SHOP_API_KEY]. One that is not set is an error.",
    )
    cwd: str = Field(
        "",
        validate_default=True,
        description="Folder a stdio server's command runs in, relative to the config file; empty: the config "
        "file's folder (as every other tools.* path resolves); `--tools mcp:...` typed on the command line runs in "
        "the working folder.",
    )

    @field_validator("cwd")
    @classmethod
    def _from_config(cls, value: str, info: ValidationInfo) -> str:
        return resolve_path(value or ".", info)

    def environment(self) -> dict[str, str]:
        """The variables `env` names, from this process's environment; a ConfigError names one that is not set."""
        values = {name: secret_from_env(name) for name in self.env}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise ConfigError(f"tools.mcp.env: environment variable(s) {', '.join(missing)} not set")
        return values  # type: ignore[return-value]


def is_mcp(spec: str | None) -> bool:
    """Whether a `tools.spec` names an MCP server rather than a file."""
    return bool(spec) and spec.startswith(PREFIX)


def target(spec: str) -> str:
    """The command or URL after `mcp:`; an empty one is an error naming the spec."""
    rest = spec.removeprefix(PREFIX).strip()
    if not rest:
        raise SeedError(f"{spec!r}: name the MCP server after mcp: (a command, or an http(s) URL)")
    return rest


def _is_url(rest: str) -> bool:
    return urlsplit(rest).scheme in ("http", "https")


def specs_sha(specs: list[dict]) -> str:
    """The hash of a listing (its functions' specs): the execution check's version of the tools, as a module's
    hash is for the sandbox."""
    return hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()[:16]


def to_spec(tool: Any) -> dict:
    """An MCP tool as an OpenAI function: its inputSchema is the parameters, as the server gives it."""
    return {"name": tool.name, "description": tool.description or "", "parameters": tool.input_schema}


def _crashed(outcome: Outcome) -> bool:
    return bool(outcome.error) and outcome.error.startswith(CRASH)


def wraps_result(tool: Any) -> bool:
    """Whether a listed tool's output schema is the wrapper the SDK's server puts around a result that is not an
    object (`{"result": ...}`, a str's, a list's): the value inside is the tool's result, as the sandbox has it."""
    schema = getattr(tool, "output_schema", None) or {}
    return (
        schema.get("type") == "object"
        and set(schema.get("properties") or ()) == {"result"}
        and schema.get("required") == ["result"]
    )


def result_value(result: Any, wrapped: bool = False) -> Any:
    """A tool's result as JSON: its structuredContent when it gives one (the value under `result` where the tool's
    output schema is the SDK's wrapper: `wrapped`); else its one text block (parsed when it is JSON); else the list
    of its blocks (texts, other blocks as MCP writes them)."""
    if result.structured_content is not None:
        if wrapped and isinstance(result.structured_content, dict) and "result" in result.structured_content:
            return result.structured_content["result"]
        return result.structured_content
    values = []
    for block in result.content:
        if block.type == "text":
            try:
                values.append(json.loads(block.text))
            except ValueError:
                values.append(block.text)
        else:
            values.append(block.model_dump(mode="json", by_alias=True, exclude_none=True))
    return values[0] if len(values) == 1 else values


class McpTools:
    """One session with the MCP server of `spec`, used as the Sandbox is (`run(calls) -> [Outcome]`).

    `with McpTools("mcp:python server.py", settings, timeout_s=5) as server: outcomes = server.run(calls)`
    """

    def __init__(
        self,
        spec: str,
        settings: McpConfig,
        *,
        timeout_s: float = 5.0,
        concurrency: int = 2,
        listing_sha: str | None = None,
    ):
        self.spec, self.target = spec, target(spec)
        self.listing_sha = listing_sha  # the listing the calls were checked against: the server must still list it
        self.settings = settings
        self.timeout_s = float(timeout_s)
        self.concurrency = concurrency
        self._stack: contextlib.ExitStack | None = None
        self._portal = None
        self._client = None
        self._signer = None  # the Auth that signs http requests: it knows every token sent, to redact them
        self._wrapped: set[str] = set()  # the tools whose structured results the SDK wraps (wraps_result)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start (or reach) the server and list its tools; a SeedError names the spec if it cannot."""
        from anyio.from_thread import start_blocking_portal

        self._stack = contextlib.ExitStack()
        try:
            self._portal = self._stack.enter_context(start_blocking_portal())
            self._client = self._stack.enter_context(self._portal.wrap_async_context_manager(self._session()))
            self.tools: list[dict] = self._portal.call(self._list)  # OpenAI function specs, in the server's order
        except ConfigError:
            self.close()
            raise
        except Exception as failure:  # noqa: BLE001 - spawn, connect, handshake and listing errors alike
            self.close()
            raise SeedError(f"{self.spec}: cannot use the MCP server: {self._describe(failure)}") from None
        if self.listing_sha is not None and specs_sha(self.tools) != self.listing_sha:
            self.close()
            raise SeedError(
                f"{self.spec}: the server's tools changed since they were listed: run the tools stage again"
            )

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            with contextlib.suppress(Exception):  # a server that will not stop is killed by the SDK; nothing to add
                stack.close()

    @contextlib.asynccontextmanager
    async def _session(self):
        from mcp import Client, StdioServerParameters

        # The handshake and listing get connect_timeout_s; each tools/call gets the execution check's timeout.
        options = {"read_timeout_seconds": self.settings.connect_timeout_s, "cache": None}
        if _is_url(self.target):
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            # No read timeout on the connection: the server's event stream stays open, and the session bounds
            # each request (connect_timeout_s, or a call's timeout).
            timeout = httpx2.Timeout(self.settings.connect_timeout_s, read=None)
            async with (
                httpx2.AsyncClient(auth=self._auth(), timeout=timeout) as http,
                Client(streamable_http_client(self.target, http_client=http), **options) as client,
            ):
                yield client
            return
        try:
            command = shlex.split(self.target)
        except ValueError as exc:
            raise SeedError(f"{self.spec}: not a command line: {exc}") from None
        s = self.settings
        server = StdioServerParameters(command=command[0], args=command[1:], env=s.environment(), cwd=s.cwd)
        async with Client(server, **options) as client:
            yield client

    def _auth(self):
        """httpx2 auth that sets the bearer header on every request (the Databricks one renewed by the SDK)."""
        import httpx2

        from lakesynth.llm.auth import Auth, Endpoint

        s = self.settings
        token = secret_from_env(s.token_env)
        if s.token_env and not token:
            raise ConfigError(f"tools.mcp.token_env: environment variable {s.token_env} is not set")
        if not token and not s.databricks_auth:
            return None
        parts = urlsplit(self.target)
        endpoint = Endpoint(f"{parts.scheme}://{parts.netloc}", "mcp", SecretStr(token or "unused"), s.databricks_auth)
        signer = self._signer = Auth(endpoint, s.connect_timeout_s)

        class Bearer(httpx2.Auth):
            def auth_flow(self, request):
                request.headers.update(signer.header())
                yield request

        return Bearer()

    async def _list(self) -> list[dict]:
        tools, cursor = [], None
        while True:
            page = await self._client.list_tools(cursor=cursor)
            tools += page.tools
            cursor = page.next_cursor
            if not cursor:
                self._wrapped = {t.name for t in tools if wraps_result(t)}
                return [to_spec(t) for t in tools]

    def run(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
        """Run every call (tool name, arguments), `concurrency` at a time; outcomes in input order.

        A server that dies fails every call in flight and after it. Each of those runs again alone on a
        restarted server, so that only a call that kills the server fails (a crash of its own row, as a sandbox
        worker's is); a call the dying server had begun may so run twice."""
        if self._client is None:
            raise RuntimeError("McpTools not started: use it as a context manager or call start()")
        outcomes = self._portal.call(self._run_all, calls)
        crashed = [i for i, o in enumerate(outcomes) if _crashed(o)]
        dead = bool(crashed)
        for i in crashed:
            if dead:
                self.close()
                self.start()
            outcomes[i] = self._portal.call(self._call, *calls[i])
            dead = _crashed(outcomes[i])
        if dead:
            self.close()
            self.start()  # the next run() starts on a live server
        return outcomes

    async def _run_all(self, calls: list[tuple[str, dict[str, Any]]]) -> list[Outcome]:
        import anyio

        outcomes: list[Outcome | None] = [None] * len(calls)
        limit = anyio.Semaphore(self.concurrency)

        async def one(i: int, name: str, arguments: Any) -> None:
            async with limit:
                outcomes[i] = await self._call(name, arguments)

        async with anyio.create_task_group() as group:
            for i, (name, arguments) in enumerate(calls):
                group.start_soon(one, i, name, arguments)
        return outcomes

    async def _call(self, name: str, arguments: Any) -> Outcome:
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        from lakesynth.tools.sandbox import Outcome  # late (pebble): every run imports this module

        if not isinstance(arguments, dict) or not all(isinstance(key, str) for key in arguments):
            return Outcome(False, None, "TypeError: arguments must be a JSON object", 0.0)
        start = time.perf_counter()
        try:
            result = await self._client.call_tool(name, arguments, read_timeout_seconds=self.timeout_s)
        except MCPError as error:
            seconds = time.perf_counter() - start
            if error.code == REQUEST_TIMEOUT:
                return Outcome(False, None, f"Timeout: no result within {self.timeout_s:g} s", self.timeout_s)
            if error.code == CONNECTION_CLOSED:
                return Outcome(False, None, f"{CRASH} the MCP server closed the connection ({error.message})", seconds)
            return Outcome(False, None, self._redact(f"MCPError: {error.message}"), seconds)
        except Exception as failure:  # noqa: BLE001 - transport errors, a reply that does not validate
            return Outcome(False, None, self._describe(failure), time.perf_counter() - start)
        seconds = time.perf_counter() - start
        value = result_value(result, name in self._wrapped)
        if result.is_error:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            return Outcome(False, None, self._redact(f"ToolError: {text}"), seconds)
        return Outcome(True, self._redact(json.dumps(value, ensure_ascii=False)), None, seconds)

    def _describe(self, error: BaseException) -> str:
        """`Type: message`, the first of a group's errors (anyio raises groups), without any token."""
        while getattr(error, "exceptions", None):
            error = error.exceptions[0]
        text = str(error)
        return self._redact(f"{type(error).__name__}: {text}" if text else type(error).__name__)

    def _redact(self, text: str) -> str:
        return self._signer.redact(text) if self._signer is not None else text
