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


def chat_violation(messages: list[dict], max_tokens: int) -> str | None:
    """Why an example breaks the chat-completion data rules, or None when it is valid."""
    if not messages:
        return "no messages"
    roles = [m.get("role") for m in messages]
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
