"""Training examples: the shapes a training row can take, and the JSONL line each trainer wants from it.

One contract holds every shape, so every dataset goes through the same split, checks and export:
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
from pyspark.sql import DataFrame, Window
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


def normalized_text(column: str) -> F.Column:
    """Text as duplicates are compared: lower case, whitespace runs as one space, no punctuation at the ends.
    "How do I block my card?" and "how do I  block my card" are the same question."""
    text = F.regexp_replace(F.lower(F.col(column)), r"\s+", " ")
    return F.regexp_replace(text, r"^[\s\p{P}\p{S}]+|[\s\p{P}\p{S}]+$", "")


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


def _records(value) -> list[dict]:
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
    import pandas as pd

    for batch in batches:
        values, ids = [], []
        for row in batch.to_dict("records"):
            example = {
                "shape": row.get("shape"),
                "messages": _records(row.get("messages")),
                "tools": row.get("tools"),
                "chosen": _records(row.get("chosen")),
                "rejected": _records(row.get("rejected")),
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


# The text an example is split by (not a column of the table): its question.
SPLIT_TEXT = "split_text"
DRAW = "_split_draw"  # the example's draw in [0, 1) that decides its split


def check_examples(chat: DataFrame, *, max_tokens: int) -> DataFrame:
    """Adds `violation` (None when valid) and `n_tokens` to each example."""
    schema = T.StructType(
        chat.schema.fields + [T.StructField("violation", T.StringType()), T.StructField("n_tokens", T.LongType())]
    )
    return chat.mapInPandas(functools.partial(_check_batches, max_tokens=max_tokens), schema)


def _check_batches(batches: Iterator[pd.DataFrame], *, max_tokens: int) -> Iterator[pd.DataFrame]:
    for batch in batches:
        messages = [_records(ms) for ms in batch["messages"]]  # tool_calls as lists, not arrays
        yield batch.assign(
            violation=[chat_violation(m, max_tokens) for m in messages], n_tokens=[estimate_tokens(m) for m in messages]
        )


def assign_split(chat: DataFrame, *, by: str, val_fraction: float, test_fraction: float, seed: int) -> DataFrame:
    """Adds `split`, drawn per example from a seeded hash of its normalised text `by` (examples.normalized_text):
    adding or removing data never moves an example, the same question (normalised) is in one split only, and
    each topic gets its share of every split in expectation."""
    digest = F.sha2(F.concat_ws("|", F.lit(str(seed)), normalized_text(by)), 256)
    draw = F.conv(F.substring(digest, 1, 8), 16, 10).cast("double") / float(16**8)  # uniform in [0, 1)
    # No otherwise(): an all-literal CASE is NOT NULL on classic Spark but nullable on Sail (parity suite).
    split = (
        F.when(F.col(DRAW) < val_fraction, "val")
        .when(F.col(DRAW) < val_fraction + test_fraction, "test")
        .when(F.col("example_id").isNotNull(), "train")
    )
    return chat.withColumn(DRAW, draw).withColumn("split", split)


def stratified_split(
    chat: DataFrame, *, by: str, strata: list[str], val_fraction: float, test_fraction: float, seed: int
) -> DataFrame:
    """Adds `split` with exact shares per stratum (the values of the `strata` columns), counted in distinct
    questions (normalised `by`), so a question repeated is in one split only: the whole split gets
    round(n x fraction) of them, shared among the strata by largest remainder, so each stratum is within one of its
    share (of val, and of val and test together). Within a stratum the questions are taken in the order of the
    seeded hash of `by` (as `assign_split` draws), so a rerun on the same data gives the same split; adding data to
    a stratum can move a question at its boundary, never one of another stratum."""
    drawn = assign_split(chat, by=by, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed).drop("split")
    texts = drawn.select(*strata, DRAW).distinct()
    sizes = {tuple(r[c] for c in strata): r["count"] for r in texts.groupBy(*strata).count().collect()}
    total = sum(sizes.values())
    quotas = {k: [0, 0] for k in sizes}
    for i, fraction in enumerate((val_fraction, val_fraction + test_fraction)):  # cumulative: val, then val+test
        exact = {k: n * fraction for k, n in sizes.items()}
        floors = {k: int(v) for k, v in exact.items()}
        short = round(total * fraction) - sum(floors.values())
        for k in sorted(exact, key=lambda k: (floors[k] - exact[k], str(k)))[: max(0, short)]:
            floors[k] += 1
        for k in sizes:
            quotas[k][i] = floors[k]
    bounds = drawn.sparkSession.createDataFrame(
        [[*k, v, t] for k, (v, t) in quotas.items()],
        ", ".join([*(f"`{c}` {drawn.schema[c].dataType.simpleString()}" for c in strata), "_val int", "_val_test int"]),
    )
    rank = F.row_number().over(Window.partitionBy(*strata).orderBy(DRAW))
    ranked = texts.join(bounds, strata, "left").withColumn("_rank", rank)
    split = F.when(F.col("_rank") <= F.col("_val"), "val").when(F.col("_rank") <= F.col("_val_test"), "test")
    chosen = ranked.select(*strata, DRAW, split.when(F.col("_rank").isNotNull(), "train").alias("split"))
    return drawn.join(chosen, [*strata, DRAW], "left")


def fill_empty_splits(split: DataFrame, *, val_fraction: float, test_fraction: float) -> DataFrame:
    """A split that should get examples but drew none (a small dataset) takes the training question drawn
    nearest to it, with every example of that question, so a fine-tune always has a validation set. This
    is the one case in which an example can move: once the split draws examples of its own, it goes back."""
    counts = {r.split: r["count"] for r in split.groupBy("split").count().collect()}
    for name, share in (("val", val_fraction), ("test", test_fraction)):
        if share and not counts.get(name) and counts.get("train", 0) >= 2:
            nearest = split.where(F.col("split") == "train").agg(F.min(DRAW)).first()[0]
            split = split.withColumn("split", F.when(F.col(DRAW) == nearest, name).otherwise(F.col("split")))
            counts = {r.split: r["count"] for r in split.groupBy("split").count().collect()}
    return split
