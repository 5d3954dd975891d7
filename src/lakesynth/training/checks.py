"""The chat-completion data rules a training example must keep: roles, turns, content, template tokens, length."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from lakesynth.training.examples import records

ROLES = ("system", "user", "assistant")
# Chat-template control tokens must not appear in content: the trainer adds them itself.
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "[INST]", "<s>")
CHARS_PER_TOKEN = 4  # documented estimate where no tokenizer is at hand (about 4 characters per token in English)


def estimate_tokens(messages: list[dict]) -> int:
    """Tokens of an example by the ~4 characters per token estimate, plus 4 per message for the template."""
    return sum(len(m.get("content") or "") // CHARS_PER_TOKEN + 4 for m in messages)


def _turns(messages: list[dict]) -> list[str] | str:
    """The roles as turns: an assistant's tool calls, the `tool` messages with their results and the assistant's next
    message are one assistant turn. A violation (a str) where a tool message answers no open call, a call gets no
    result, or results are not followed by the assistant."""
    roles: list[str] = []
    open_ids: set | None = None  # the calls of the last assistant message still without their result
    answered = False
    for m in messages:
        role, calls = m.get("role"), m.get("tool_calls") or []
        if role == "tool" and open_ids is not None:  # elsewhere a tool message is an unknown role
            if m.get("tool_call_id") not in open_ids:
                return f"tool message answers no open call: {m.get('tool_call_id')!r}"
            open_ids.discard(m.get("tool_call_id"))
            answered = True
            continue
        if answered:
            if open_ids or role != "assistant":
                return "tool results not followed by the assistant" if not open_ids else "a tool call has no result"
            answered, open_ids = False, {c["id"] for c in calls} if calls else None
            continue  # the same assistant turn, another step or its final answer
        roles.append(role)
        open_ids = {c["id"] for c in calls} if role == "assistant" and calls else None
    if answered:
        return "does not end with an assistant message"
    return roles


def chat_violation(messages: list[dict], max_tokens: int) -> str | None:
    """Why an example breaks the chat-completion data rules, or None when it is valid (`tool` messages only as the
    results of the assistant's calls, inside its turn)."""
    if not messages:
        return "no messages"
    roles = _turns(messages)
    if isinstance(roles, str):
        return roles
    if any(r not in ROLES for r in roles):
        return f"unknown role in {roles}"
    if "system" in roles[1:]:
        return "system message not first"
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(turns)):
        return f"roles do not alternate user/assistant: {roles}"
    if turns[-1] != "assistant":
        return "does not end with an assistant message"
    if any(not (m.get("content") or "").strip() and not m.get("tool_calls") for m in messages):
        return "empty content"
    if any(tok in (m.get("content") or "") for m in messages for tok in TEMPLATE_TOKENS):
        return "contains chat-template tokens"
    if estimate_tokens(messages) > max_tokens:
        return f"longer than {max_tokens} tokens (estimated)"
    return None


def check_examples(chat: DataFrame, *, max_tokens: int) -> DataFrame:
    """Adds `violation` (None when valid) and `n_tokens` to each example."""
    schema = T.StructType(
        chat.schema.fields + [T.StructField("violation", T.StringType()), T.StructField("n_tokens", T.LongType())]
    )
    return chat.mapInPandas(functools.partial(_check_batches, max_tokens=max_tokens), schema)


def _check_batches(batches: Iterator[pd.DataFrame], *, max_tokens: int) -> Iterator[pd.DataFrame]:
    for batch in batches:
        messages = [records(ms) for ms in batch["messages"]]  # tool_calls as lists, not arrays
        yield batch.assign(
            violation=[chat_violation(m, max_tokens) for m in messages], n_tokens=[estimate_tokens(m) for m in messages]
        )
