"""Training examples: the shapes a training row can take, and the JSONL line each trainer wants from it.

One contract holds every shape, so every dataset goes through the same split (splits.py), checks (checks.py) and
export:
- `chat`: `messages` (system?, user, assistant ...);
- `tool_chat`: `messages` whose assistant turns may carry `tool_calls` (and `tool` turns their results),
  with the `tools` offered (a JSON list of OpenAI tool specs);
- `preference`: `messages` is the prompt, `chosen` and `rejected` the two assistant replies.
Exports: `openai` (OpenAI fine-tuning chat: tool-call arguments as a JSON string, top-level `tools`),
`databricks` (Foundation Model fine-tuning: roles system/user/assistant only, tool calls as the assistant's
content in JSON), `trl_sft` (TRL SFTTrainer: arguments as a dict, `tools` a list of schemas), `trl_dpo`
(conversational prompt/chosen/rejected) and `trl_kto` (prompt/completion/label, two lines a pair).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

S = T.StringType()
TOOL_CALL = T.StructType(
    [
        T.StructField("id", S),
        T.StructField("type", S),
        T.StructField("function", T.StructType([T.StructField("name", S), T.StructField("arguments", S)])),
    ]
)
MESSAGE = T.StructType(
    [
        T.StructField("role", S),
        T.StructField("content", S),
        T.StructField("tool_calls", T.ArrayType(TOOL_CALL)),
        T.StructField("tool_call_id", S),
    ]
)
MESSAGES = T.ArrayType(MESSAGE)
SHAPES = ("chat", "tool_chat", "preference")


FORMATS = ("openai", "databricks", "trl_sft", "trl_dpo", "trl_kto")
# The columns every training-example table has; `tools` is JSON text (a list of tool specs) or null.
COLUMNS = [("shape", S), ("messages", MESSAGES), ("tools", S), ("chosen", MESSAGES), ("rejected", MESSAGES)]


def message(role: str, content: str | None = None, tool_calls: list[dict] | None = None, tool_call_id=None) -> dict:
    """One message as the contract stores it (tool-call arguments as JSON text)."""
    calls = None
    if tool_calls:
        calls = [
            {
                "id": c.get("id") or f"call_{i}",
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _as_text(c["function"].get("arguments", {})),
                },
            }
            for i, c in enumerate(tool_calls)
        ]
    return {"role": role, "content": content, "tool_calls": calls, "tool_call_id": tool_call_id}


def _as_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False, sort_keys=True)


def _plain(m: dict, *, arguments_as_dict: bool = False) -> dict:
    """A stored message as trainers want it: absent fields left out, not null."""
    out: dict[str, Any] = {"role": m["role"]}
    if m.get("content") is not None or not m.get("tool_calls"):
        out["content"] = m.get("content")
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": c["id"],
                "type": c.get("type") or "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": json.loads(c["function"]["arguments"] or "{}")
                    if arguments_as_dict
                    else c["function"]["arguments"],
                },
            }
            for c in m["tool_calls"]
        ]
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _databricks(m: dict) -> dict:
    """Foundation Model fine-tuning knows no tool calls: they become the assistant's content, as JSON."""
    if m.get("tool_calls"):
        calls = [
            {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"] or "{}")}
            for c in m["tool_calls"]
        ]
        return {"role": "assistant", "content": json.dumps(calls, ensure_ascii=False)}
    if m["role"] not in ("system", "user", "assistant"):
        raise ValueError(f"Databricks fine-tuning has no '{m['role']}' role; export this dataset as openai or trl_sft")
    return {"role": m["role"], "content": m.get("content")}


def to_lines(example: dict, fmt: str) -> list[dict]:
    """The JSONL record(s) one training example becomes in export format `fmt`."""
    messages = list(example.get("messages") or [])
    tools = json.loads(example["tools"]) if example.get("tools") else None
    if fmt == "openai":
        line: dict[str, Any] = {"messages": [_plain(m) for m in messages]}
        if tools:
            line["tools"] = tools
        return [line]
    if fmt == "databricks":
        return [{"messages": [_databricks(m) for m in messages]}]
    if fmt == "trl_sft":
        line = {"messages": [_plain(m, arguments_as_dict=True) for m in messages]}
        if tools:
            line["tools"] = [t.get("function", t) if isinstance(t, dict) else t for t in tools]
        return [line]
    if example.get("shape") != "preference":
        raise ValueError(f"export format {fmt} needs preference examples, got shape {example.get('shape')!r}")
    prompt = [_plain(m) for m in messages]
    chosen = [_plain(m) for m in example.get("chosen") or []]
    rejected = [_plain(m) for m in example.get("rejected") or []]
    if fmt == "trl_dpo":
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    if fmt == "trl_kto":  # unpaired: a side left empty (a rating in the middle of the scale) has no line
        return [
            {"prompt": prompt, "completion": completion, "label": label}
            for completion, label in ((chosen, True), (rejected, False))
            if completion
        ]
    raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")


def records(value) -> list[dict]:
    """Spark rows, arrow structs or dicts -> plain dicts (None stays None)."""
    if value is None:
        return []
    return [m.asDict(recursive=True) if hasattr(m, "asDict") else _deep(m) for m in value]


def _deep(value):
    if isinstance(value, dict):
        return {k: _deep(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return [_deep(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_deep(v) for v in value]
    return value


def json_lines(batches: Iterator, *, fmt: str) -> Iterator:
    """mapInPandas body: each training example's export lines as `value` (compact JSON), keyed by example_id."""

    for batch in batches:
        values, ids = [], []
        for row in batch.to_dict("records"):
            example = {
                "shape": row.get("shape"),
                "messages": records(row.get("messages")),
                "tools": row.get("tools"),
                "chosen": records(row.get("chosen")),
                "rejected": records(row.get("rejected")),
            }
            for line in to_lines(example, fmt):
                values.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
                ids.append(row["example_id"])
        yield pd.DataFrame({"value": values, "example_id": ids})


def message_column(role: str, content: F.Column) -> F.Column:
    """One plain message (role and content) as a column of MESSAGE."""
    return F.struct(
        F.lit(role).alias("role"),
        content.alias("content"),
        F.lit(None).cast(T.ArrayType(TOOL_CALL)).alias("tool_calls"),
        F.lit(None).cast("string").alias("tool_call_id"),
    )


def prompt_turns(question: F.Column, system_prompt: str | None) -> list[F.Column]:
    """The turns before the answer: the system prompt (when set) and the question."""
    return ([message_column("system", F.lit(system_prompt))] if system_prompt else []) + [
        message_column("user", question)
    ]


def write_jsonl(rows: DataFrame, target: Path, fmt: str) -> None:
    """Each example's line(s) in export format `fmt` (examples.to_lines), UTF-8, as ONE file in example_id order, so
    the same examples always give the same bytes (a fine-tune on them is then not paid for twice). The engine
    renders the lines; the driver streams them in order into the file (Sail writes a sorted frame as several
    part files whatever the partitioning, so their concatenation would not be in order)."""
    lines = rows.select("example_id", *[n for n, _ in COLUMNS]).mapInPandas(
        functools.partial(json_lines, fmt=fmt), "value string, example_id string"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("w", encoding="utf-8", newline="\n") as out:
        for row in lines.orderBy("example_id", "value").select("value").toLocalIterator():
            out.write(row.value + "\n")
    partial.replace(target)
