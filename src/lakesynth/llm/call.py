"""A stage's Call: how it asks the teacher (endpoint, output model, parameters), its fingerprints, its replies parsed.

One request: fingerprint -> journal hit? -> send -> parse into the output model -> retry -> record; the sending and
retrying is the pool's (pool.py), what a failure becomes is retry.py's.
The request path is lean because the client's CPU, not the endpoint, is what limits a fast endpoint
on a small machine: one pooled HTTP client per pool, the body's constant part serialised once per
Call, the reply parsed once and validated once (`model_validate_json`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from lakesynth.config import EndpointSettings
from lakesynth.llm import serverless
from lakesynth.llm.auth import Endpoint
from lakesynth.llm.journal import Result
from lakesynth.llm.pool import Pool
from lakesynth.llm.retry import FATAL_STATUS, SHAPE_HINT, InvalidOutput, Unfinished


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
    # A lower completion limit sent than `max_tokens` (a preview's first look at one example): the fingerprint keeps
    # `max_tokens`, as a reply that ends within the cap is a reply to the full request too (the cap only cuts). One
    # cut at the cap is its row's error at once (Unfinished, not retried), and the full request is asked later.
    reply_cap: int | None = None

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
    def body_prefix(self) -> bytes:
        """The request body up to its messages (model, response format, parameters), serialised once."""
        sent = {**self.params, "max_tokens": min(self.max_tokens, self.reply_cap or self.max_tokens)}
        fixed = {"model": self.endpoint.model, "response_format": self.response_format, **sent}
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

        pool: Pool | None = None
        running: collections.deque = collections.deque()
        try:
            pool = on_loop(Pool.open(self, workers, preflight)).result()
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

    def parse(self, content: bytes, result: Result) -> dict:
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
        if finish == "length" and self.reply_cap and self.reply_cap < self.max_tokens:
            raise Unfinished(
                f"reply longer than a first look's {self.reply_cap} tokens (max_tokens={self.max_tokens})", raw
            )
        if finish == "length":
            raise InvalidOutput(f"reply cut at max_tokens={self.max_tokens}", raw)
        if finish == "content_filter":
            raise InvalidOutput("reply blocked by the endpoint's content filter", raw)
        if raw is None and message.get("refusal"):
            raise InvalidOutput(f"the model refused: {message['refusal']}", None)
        return validate_output(self.output, raw)

    def describe_fatal(self, status: int, message: str) -> str:
        hint = FATAL_STATUS.get(status, SHAPE_HINT).format(model=self.endpoint.model, base_url=self.endpoint.base_url)
        return f"{self.label}: the teacher endpoint answered {status}: {hint}. Server said: {message}"


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


def _encode(messages: list[dict]) -> bytes:
    """The messages as JSON: hashed into the fingerprint, and the same bytes sent in the body."""
    return json.dumps(messages, sort_keys=True).encode()
