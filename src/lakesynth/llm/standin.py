"""A stand-in OpenAI-compatible chat server on 127.0.0.1, for tests and benchmarks.

Answers are deterministic and valid against the requested JSON schema, derived from a hash of
the request. Latency, a hard concurrency cap (requests beyond it queue) and seeded fault
injection make it a known, repeatable endpoint. `GET /stats` reports what it served.

    python -m lakesynth.llm.standin --latency-ms 100 --max-concurrency 64 --fault-rate 0.2

Faults: FAULTS are the default mix; OPT_IN_FAULTS are drawn only when named in `faults`.
As a Databricks workspace (DATABRICKS_HOST pointed at it) it serves Model Serving's chat completions under
/serving-endpoints and the few REST calls of a remote fine-tune (one-time job runs), for the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

EMBEDDING_DIM = 64
FAULTS = ("429", "500", "timeout", "malformed", "schema", "truncated")
# Replies a real endpoint sends now and then, each answered as OpenAI-compatible servers do; "reset" drops
# the connection without a reply, "huge_retry_after" is a 429 asking for a day's wait, "503_retry_after" an
# overloaded endpoint asking for a wait (a throttle, as a 429 is).
OPT_IN_FAULTS = ("409", "413", "422", "400_context", "reset", "huge_retry_after", "503_retry_after")
_FAULT_REPLIES = {
    "409": (409, {}, {"error": {"message": "Conflict: a request with this id is in progress", "type": "conflict"}}),
    "413": (413, {}, {"error": {"message": "Request entity too large", "type": "invalid_request_error"}}),
    "422": (422, {}, {"detail": [{"loc": ["body", "messages"], "msg": "unprocessable", "type": "value_error"}]}),
    "400_context": (
        400,
        {},
        {
            "error": {
                "message": "This model's maximum context length is 4096 tokens. However, your messages resulted "
                "in 5120 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    ),
    "huge_retry_after": (429, {"retry-after": "86400"}, {"error": {"message": "rate limited; come back tomorrow"}}),
}


@dataclass
class StandInOptions:
    latency_ms: float = 0.0
    max_concurrency: int = 1024
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    seed: int = 0
    retry_after_ms: tuple[float, float] = (20.0, 20.0)  # the wait a throttle asks for, drawn from this range
    throttle_above: int = 0  # a 429 (with Retry-After) for a request beyond this many in flight (0: never)
    timeout_sleep_s: float = 30.0
    api_key: str | None = None
    expire_first: int = 0  # the first N chat requests get a 401, as from an expired token
    models: tuple[str, ...] = ()
    reject_schema: bool = False
    items: int = 3
    run_polls: int = 1  # Jobs API: a submitted run terminates on this poll (0: never, until cancelled)
    run_result: str = "SUCCESS"  # Jobs API: how a submitted run ends
    # Scripted replies: a chat request whose messages contain the text (the first that matches) gets the reply.
    replies: tuple[tuple[str, str], ...] = ()
    # A scripted reply: for each (text, fields) whose text the request's messages contain, those of `fields` that
    # the reply's object has are set (a critic's `in_scope` for one question; the answer to it is left alone).
    script: tuple[tuple[str, dict], ...] = ()
    no_digits: bool = False  # strings spell their digest in letters: text that states no number or identifier
    # Rewritten replies: (pattern, field, value) sets every `field` of the reply to a request whose text matches the
    # regex `pattern` to `value`; a value with "{}" keeps the drawn text in it (each item of a list of texts).
    rewrite: tuple[tuple[str, str, object], ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS + OPT_IN_FAULTS)
        if unknown:
            raise ValueError(f"unknown stand-in faults {sorted(unknown)}; known: {FAULTS + OPT_IN_FAULTS}")


@dataclass
class Stats:
    requests: int = 0
    completions: int = 0
    probes: int = 0  # chat requests for one token (a stage's preflight)
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter = field(default_factory=Counter)
    runs: dict = field(default_factory=dict)  # Jobs API: run id -> {"polls", "state", "body"}
    cancelled: list = field(default_factory=list)
    prompts: deque = field(default_factory=lambda: deque(maxlen=1000))  # the latest chat requests' messages, as sent

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "completions": self.completions,
            "probes": self.probes,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "faults": dict(self.faults),
        }


def fake_value(schema: dict, seed: str, name: str = "value", defs: dict | None = None, items: int = 3):
    """A value valid against `schema`, derived from `seed` so equal requests get equal answers."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return fake_value(defs[schema["$ref"].rsplit("/", 1)[-1]], seed, name, defs, items)
    for key in ("anyOf", "oneOf"):
        if key in schema:  # a value of one branch (not null), which varies with the request
            branches = [b for b in schema[key] if b.get("type") != "null"] or schema[key]
            pick = int(hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()[:6], 16) % len(branches)
            return fake_value(branches[pick], seed, name, defs, items)
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if "enum" in schema:  # a choice that varies with the request, the same for the same request
        return schema["enum"][int(hashlib.sha256(seed.encode()).hexdigest()[:6], 16) % len(schema["enum"])]
    if kind == "object":
        return {k: fake_value(v, f"{seed}/{k}", k, defs, items) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        count = max(schema.get("minItems", items), min(items, schema.get("maxItems", items)))
        return [
            fake_value(schema.get("items", {"type": "string"}), f"{seed}/{i}", name, defs, items) for i in range(count)
        ]
    if kind == "integer":
        return int(hashlib.sha256(seed.encode()).hexdigest()[:6], 16) % 100
    if kind == "number":
        return (int(hashlib.sha256(seed.encode()).hexdigest()[:6], 16) % 1000) / 10
    if kind == "boolean":
        return hashlib.sha256(seed.encode()).digest()[0] % 2 == 0
    digest = hashlib.sha256(seed.encode()).hexdigest()[:10]
    return f"Stand-in {name} {digest}: what would a customer ask about item {digest[:4]}?"


def scripted(value, request: dict, script: tuple[tuple[str, dict], ...]):
    """`value` with the fields of every script entry whose text the request's messages contain (only those it has)."""
    if not script or not isinstance(value, dict):
        return value
    text = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
    for needle, fields in script:
        if needle in text:
            value.update({k: v for k, v in fields.items() if k in value})
    return value


SPELLED = str.maketrans("0123456789", "ghijklmnop")


def spelled(value):
    """`value` with every digit of its strings spelled as a letter (numbers stay numbers)."""
    if isinstance(value, str):
        return value.translate(SPELLED)
    if isinstance(value, dict):
        return {k: spelled(v) for k, v in value.items()}
    return [spelled(v) for v in value] if isinstance(value, list) else value


def scripts(value, rules: list[tuple[str, object]]):
    """`value` with each (field, new) rule applied wherever `field` occurs (StandInOptions.rewrite)."""
    if isinstance(value, list):
        return [scripts(v, rules) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        item = scripts(item, rules)
        for field_name, new in rules:
            if key == field_name:
                item = _scripted(item, new)
        out[key] = item
    return out


def _scripted(item, new):
    if isinstance(new, str) and "{}" in new:
        if isinstance(item, list):
            return [new.format(i) if isinstance(i, str) else i for i in item]
        return new.format(item) if isinstance(item, str) else item
    return new


class StandIn:
    """The server; start() runs it on its own event loop in a daemon thread."""

    def __init__(self, options: StandInOptions | None = None, port: int = 0) -> None:
        self.options = options or StandInOptions()
        self.stats = Stats()
        self._rng = random.Random(self.options.seed)
        self._port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StandIn:
        threading.Thread(target=self._thread, daemon=True, name="standin").start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop listening, drop every open connection (a client then sees them refused or reset), stop the loop."""
        if self._loop and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def reset(self, **changes) -> None:
        """Default options but for `changes` (fields of StandInOptions), fresh counters, the seed restarted."""
        self.options = StandInOptions(**changes)
        self._slots = asyncio.Semaphore(self.options.max_concurrency)
        self.stats = Stats()
        self._rng = random.Random(self.options.seed)

    def _thread(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.serve())
        self._loop.run_forever()

    async def serve(self) -> asyncio.AbstractServer:
        self._slots = asyncio.Semaphore(self.options.max_concurrency)
        server = await asyncio.start_server(self._connection, "127.0.0.1", self._port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._ready.set()
        return server

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, extra, payload = await self._handle(method, path, headers, body)
                if status is None:  # the "reset" fault: no reply at all
                    writer.transport.abort()
                    return
                data = json.dumps(payload).encode()
                head_out = [f"HTTP/1.1 {status} X", "content-type: application/json", f"content-length: {len(data)}"]
                head_out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head_out) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int | None, dict, dict]:
        # Counted where the request began: one still in flight when a test resets the stand-in (a timeout fault's
        # sleep outlives its client) never counts in the next test's figures.
        opts, stats = self.options, self.stats
        if path.startswith("/api/"):
            return self._workspace_api(method, path, body)
        if method == "GET" and path.endswith("/stats"):
            return 200, {}, stats.as_dict()
        if method == "GET" and path.endswith("/models"):
            return (
                200,
                {},
                {"object": "list", "data": [{"id": m, "object": "model"} for m in opts.models or ["standin"]]},
            )
        if method == "POST" and path.endswith("/embeddings"):
            return self._embeddings(headers, body)
        if not path.endswith("/chat/completions"):
            return 404, {}, {"error": {"message": f"no route {path}"}}
        stats.requests += 1
        wrong_key = opts.api_key is not None and headers.get("authorization") != f"Bearer {opts.api_key}"
        if wrong_key or stats.requests <= opts.expire_first:
            return 401, {}, {"error": {"message": "Invalid or expired access token", "type": "authentication_error"}}
        request = json.loads(body)
        stats.prompts.append(request.get("messages"))
        stats.probes += request.get("max_tokens") == 1
        if opts.models and request.get("model") not in opts.models:
            return 404, {}, {"error": {"message": f"The model `{request.get('model')}` does not exist"}}
        fmt = request.get("response_format") or {}
        if opts.reject_schema and fmt:
            return 400, {}, {"error": {"message": "response_format json_schema is not supported by this endpoint"}}
        fault = self._rng.choice(opts.faults) if opts.fault_rate and self._rng.random() < opts.fault_rate else None
        if opts.throttle_above and stats.in_flight >= opts.throttle_above:
            fault = "429"  # an endpoint at its capacity, as a tokens-per-minute limit makes one
            stats.faults[fault] += 1
            return 429, self._retry_after(), {"error": {"message": "rate limited: too many requests in flight"}}
        async with self._slots:
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                await asyncio.sleep(opts.timeout_sleep_s if fault == "timeout" else opts.latency_ms / 1000)
            finally:
                stats.in_flight -= 1
        if fault:
            stats.faults[fault] += 1
        if fault == "429":
            return 429, self._retry_after(), {"error": {"message": "rate limited"}}
        if fault == "503_retry_after":
            return 503, self._retry_after(), {"error": {"message": "the endpoint is overloaded"}}
        if fault in ("500", "timeout"):
            return 500, {}, {"error": {"message": "internal error"}}
        if fault == "reset":
            return None, {}, {}
        if fault in _FAULT_REPLIES:
            return _FAULT_REPLIES[fault]
        # The same request gets the same reply; another temperature, another sample (as from a real model).
        sampled = [request.get("messages"), request.get("temperature")]
        seed = hashlib.sha256(json.dumps(sampled, sort_keys=True).encode()).hexdigest()
        schema = (fmt.get("json_schema") or {}).get("schema")
        value = scripted(fake_value(schema, seed, items=opts.items), request, opts.script) if schema else None
        if schema and opts.rewrite:
            text = json.dumps(request.get("messages"), ensure_ascii=False)
            value = scripts(value, [(f, v) for pattern, f, v in opts.rewrite if re.search(pattern, text)])
        answer = json.dumps(value) if schema else f"Stand-in answer {seed[:12]}."
        if opts.no_digits:
            answer = json.dumps(spelled(value)) if schema else answer.translate(SPELLED)
        text = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
        answer = next((reply for marker, reply in opts.replies if marker in text), answer)
        finish = "stop"
        limit = request.get("max_tokens") or 0
        if limit > 1 and len(answer) // 4 + 1 > limit:  # a model stops at max_tokens (tokens: characters / 4)
            answer, finish = answer[: limit * 4], "length"
        if fault == "malformed":
            answer = answer[: len(answer) // 2] + "}}oops"
        elif fault == "schema":
            answer = json.dumps({"unexpected": seed[:8]})
        elif fault == "truncated":
            answer, finish = answer[: len(answer) // 2], "length"
        stats.completions += 1
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in request.get("messages", [])) // 4 + 1
        return (
            200,
            {},
            {
                "id": f"chatcmpl-{seed[:16]}",
                "object": "chat.completion",
                "created": 0,
                "model": request.get("model"),
                "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": answer}}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(answer) // 4 + 1,
                    "total_tokens": prompt_tokens + len(answer) // 4 + 1,
                },
            },
        )

    def _retry_after(self) -> dict:
        """Retry-After headers as OpenAI sends them: in milliseconds, and in whole seconds."""
        low, high = self.options.retry_after_ms
        wait_ms = low if low == high else self._rng.uniform(low, high)  # a fixed wait draws nothing: seeds hold
        return {"retry-after-ms": f"{wait_ms:.0f}", "retry-after": str(int(wait_ms // 1000))}

    def _embeddings(self, headers: dict, body: bytes) -> tuple[int, dict, dict]:
        """OpenAI's /embeddings: each input as a unit bag-of-words vector (words hashed into EMBEDDING_DIM), so
        texts sharing most of their words are close and the same text always gets the same vector."""
        self.stats.requests += 1
        if self.options.api_key is not None and headers.get("authorization") != f"Bearer {self.options.api_key}":
            return 401, {}, {"error": {"message": "Invalid or expired access token", "type": "authentication_error"}}
        request = json.loads(body)
        texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
        data = []
        for i, text in enumerate(texts):
            vector = [0.0] * EMBEDDING_DIM
            for word in re.findall(r"\w+", str(text).lower()):
                vector[int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % EMBEDDING_DIM] += 1.0
            norm = sum(v * v for v in vector) ** 0.5 or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vector]})
        tokens = sum(len(str(t)) // 4 + 1 for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return 200, {}, {"object": "list", "data": data, "model": request.get("model"), "usage": usage}

    def _workspace_api(self, method: str, path: str, body: bytes) -> tuple[int, dict, dict]:
        """The few Databricks REST calls the remote fine-tune makes (who am I, workspace files, one-time job
        runs), so that path runs through databricks-sdk over real HTTP. Runs terminate on the `run_polls`-th
        poll with `run_result`, or when cancelled."""
        route, _, query = path.partition("?")
        request = json.loads(body) if body else {}
        runs = self.stats.runs
        if route == "/api/2.0/preview/scim/v2/Me":
            return 200, {}, {"id": "1", "userName": "standin@example.com"}
        if route in ("/api/2.0/workspace/mkdirs", "/api/2.0/workspace/import"):
            return 200, {}, {}
        if route == "/api/2.2/jobs/runs/submit" and method == "POST":
            run_id = len(runs) + 1
            runs[run_id] = {"polls": 0, "state": {"life_cycle_state": "PENDING"}, "body": request}
            return 200, {}, {"run_id": run_id}
        if route == "/api/2.2/jobs/runs/cancel" and method == "POST":
            run = runs[int(request["run_id"])]
            self.stats.cancelled.append(int(request["run_id"]))
            run["state"] = {"life_cycle_state": "TERMINATED", "result_state": "CANCELED"}
            return 200, {}, {}
        if route == "/api/2.2/jobs/runs/get":
            run_id = int(dict(p.split("=", 1) for p in query.split("&") if p)["run_id"])
            run = runs[run_id]
            run["polls"] += 1
            if run["state"].get("life_cycle_state") != "TERMINATED":
                done = self.options.run_polls and run["polls"] >= self.options.run_polls
                result = {"life_cycle_state": "TERMINATED", "result_state": self.options.run_result}
                run["state"] = result if done else {"life_cycle_state": "RUNNING"}
            return 200, {}, {"run_id": run_id, "state": run["state"]}
        return 404, {}, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no route {method} {route}"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lakesynth.llm.standin", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=1024)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {FAULTS + OPT_IN_FAULTS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after-ms", default="20,20", help="the range a throttle's Retry-After is drawn from")
    parser.add_argument("--throttle-above", type=int, default=0, help="429 beyond this many in flight (0: never)")
    args = parser.parse_args(argv)
    server = StandIn(
        StandInOptions(
            latency_ms=args.latency_ms,
            max_concurrency=args.max_concurrency,
            fault_rate=args.fault_rate,
            faults=tuple(args.faults.split(",")),
            seed=args.seed,
            retry_after_ms=tuple(float(v) for v in args.retry_after_ms.split(",")),
            throttle_above=args.throttle_above,
        ),
        port=args.port,
    )
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.serve())
    print(server.base_url, flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
