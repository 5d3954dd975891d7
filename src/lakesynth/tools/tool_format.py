"""Tool format stage: the calls every check kept -> `training_tools` and one JSONL file per split.

Each kept line becomes one `tool_chat` example: the user's query, then the assistant's calls, in the style
`tools.output.style` names:
- `json_content` (default): the assistant's content is the JSON list of calls (`[]` when no tool fits), and
  the system prompt lists the tools. Databricks Foundation Model fine-tuning takes only system, user and
  assistant roles, so this is the form it can learn from, and the form APIGen's data uses.
- `openai`: OpenAI fine-tuning's chat lines, assistant `tool_calls` with `arguments` as a JSON string, and the
  `tools` list on each line.
- `hf`: assistant `tool_calls` with `arguments` as a dict and a `tools` column, as TRL's SFTTrainer and
  `apply_chat_template(tools=...)` take them.
A query no tool fits is answered with `tools.output.no_call_reply` in the last two styles. With `tools.trajectories`
on, a pair with its final answer is a trajectory: in `openai` and `hf` the assistant's calls (ids `call_1`...), one
`tool` message per call with its `tool_call_id` and what the sandbox returned, then the answer; in `json_content` the
same steps flattened, as its format has no tool role: the calls, then a user message `Tool results:` with the JSON list
of each call's name and result, in order, then the answer (the system prompt states this protocol). With
`tools.dialogs` on, each kept multi-turn dialog is one more example (category `dialog`), written the same way. Each example's
category is the line's own, or read from its calls as the Berkeley Function Calling Leaderboard names them. The
split is stratified by function and category, exactly (splits.stratified_split): each pair of them gets its
share of every split, within one example, the examples taken in the order of a seeded hash of the normalised
query, so a rerun on the same data gives the same split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import L, S
from lakesynth.quality import diversity, signatures
from lakesynth.tools import answer_check, steps
from lakesynth.training import checks, examples, splits

STYLES = {"json_content": "databricks", "openai": "openai", "hf": "trl_sft"}  # style -> examples' export format
SYSTEM = """You are an assistant that answers by calling functions. The functions you can call:
{tools}
Reply with only a JSON list of the calls that answer the request, each {{"name": ..., "arguments": {{...}}}};
reply [] when no function fits the request."""
SYSTEM_STEPS = SYSTEM + steps.PROTOCOL  # json_content, with trajectories or dialogs


class ToolOutputConfig(Section):
    style: Literal["json_content", "openai", "hf"] = Field(
        "json_content", description="json_content (Databricks FM), openai (tool_calls + tools) or hf (TRL)."
    )
    no_call_reply: str = Field(
        "Sorry, I cannot help with that: none of my tools does it.",
        description="openai/hf: the assistant's reply to a query no tool fits.",
    )


TABLE = tables.contract(
    "training_tools",
    [("example_id", S), ("source_id", S), ("function", S), ("category", S)]
    + examples.COLUMNS
    + [("split", S), ("n_tokens", L)],
    key="example_id",
    parent="example_id",
    parent_table="tool_calls",
)
DIVERSITY = diversity.table("tool_diversity")


def category(calls: list[dict], given: str | None, n_tools: int) -> str:
    """The BFCL category of a line: its own, else from its calls (none: irrelevance; one: simple, or multiple
    when several tools were offered; several: parallel, or parallel_multiple across functions)."""
    if given:
        return given
    if not calls:
        return "irrelevance"
    if len(calls) == 1:
        return "simple" if n_tools == 1 else "multiple"
    return "parallel" if len({c["name"] for c in calls}) == 1 else "parallel_multiple"


def listed(specs: list[dict]) -> str:
    return "\n".join(json.dumps(s["function"], ensure_ascii=False, sort_keys=True) for s in specs)


def styled(said: list[dict], *, specs: list[dict], style: str) -> tuple[list[dict], str | None]:
    """A trajectory or dialog (OpenAI-style messages: assistant `tool_calls`, `tool` results) in `style`: as it is in
    openai and hf, with the tools; flattened in json_content, under the system prompt that states the protocol."""
    if style == "json_content":
        system = examples.message("system", SYSTEM_STEPS.format(tools=listed(specs)))
        return [system] + [examples.message(m["role"], m["content"]) for m in steps.flattened(said)], None
    messages = [examples.message(m["role"], m.get("content"), m.get("tool_calls"), m.get("tool_call_id")) for m in said]
    return messages, json.dumps(specs, ensure_ascii=False, sort_keys=True)


def example(row: dict, *, specs: list[dict], style: str, no_call_reply: str, protocol: bool = False) -> dict:
    """One kept line as a `tool_chat` example in `style`; with its final `answer`, a trajectory: the calls (ids
    call_1...), one `tool` message per call with what the sandbox returned (`execution_results`), then the answer.
    `protocol`: the json_content system prompt says how results come back (trajectories or dialogs are on)."""
    calls = json.loads(row["calls"])
    answer = row.get("answer") if calls else None
    if answer:
        said = steps.trajectory(row["query"], calls, answer_check.returned(row["execution_results"]), answer)
        messages, tools = styled(said, specs=specs, style=style)
    elif style == "json_content":
        content = json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls], ensure_ascii=False)
        messages = [
            examples.message("system", (SYSTEM_STEPS if protocol else SYSTEM).format(tools=listed(specs))),
            examples.message("user", row["query"]),
            examples.message("assistant", content),
        ]
        tools = None
    else:
        calls_out = [{"id": f"call_{i}", "function": c} for i, c in enumerate(calls, start=1)]
        reply = (
            examples.message("assistant", tool_calls=calls_out)
            if calls
            else examples.message("assistant", no_call_reply)
        )
        messages, tools = (
            [examples.message("user", row["query"]), reply],
            json.dumps(specs, ensure_ascii=False, sort_keys=True),
        )
    return {
        "example_id": row["call_id"],
        "source_id": row["source_id"],
        "function": calls[0]["name"] if calls else "none",
        "category": category(calls, row["category"], len(specs)),
        "shape": "tool_chat",
        "messages": messages,
        "tools": tools,
        "chosen": None,
        "rejected": None,
        "split_text": row["query"],
    }


def dialog_example(row: dict, *, specs: list[dict], style: str) -> dict:
    """One kept multi-turn dialog (tools/dialogs.py) as a `tool_chat` example in `style`."""
    said = json.loads(row["messages"])
    messages, tools = styled(said, specs=specs, style=style)
    calls = json.loads(row["calls"])
    return {
        "example_id": row["blueprint_id"],
        "source_id": row["blueprint_id"],
        "function": calls[0]["name"] if calls else "none",
        "category": "dialog",
        "shape": "tool_chat",
        "messages": messages,
        "tools": tools,
        "chosen": None,
        "rejected": None,
        "split_text": next(m["content"] for m in said if m["role"] == "user"),
    }


def run(ctx: RunContext) -> StageResult:
    cfg, spark, rt = ctx.cfg, ctx.spark, ctx.rt
    out, fmt = cfg.tools.output, cfg.format
    specs = [json.loads(r.spec) for r in ctx.read("tools").orderBy("name").select("spec").collect()]
    kept = (
        ctx.read("call_verdicts", kept=False)
        .where("keep")
        .select("call_id", "source_id", "query", "calls", "category", "execution_results", "answer")
    )
    kept = kept.join(ctx.read("tool_calls").select("call_id"), "call_id", "left_semi")  # and every other verdict
    protocol = cfg.tools.trajectories.enabled or cfg.tools.dialogs.enabled
    rows = [
        example(r.asDict(), specs=specs, style=out.style, no_call_reply=out.no_call_reply, protocol=protocol)
        for r in kept.collect()
    ]
    if cfg.tools.dialogs.enabled:
        dialogs = ctx.read("tool_dialogs", kept=False).where("keep").select("blueprint_id", "calls", "messages")
        rows += [dialog_example(r.asDict(), specs=specs, style=out.style) for r in dialogs.collect()]
    schema = T.StructType(
        [f for f in TABLE.row_schema.fields if f.name not in ("split", "n_tokens")]
        + [T.StructField(splits.SPLIT_TEXT, S)]
    )
    frame = spark.createDataFrame(rows, schema=schema)
    checked = checks.check_examples(frame, max_tokens=fmt.max_example_tokens)
    valid = splits.stratified_split(
        checked.where(F.col("violation").isNull()),
        by=splits.SPLIT_TEXT,
        strata=["function", "category"],
        val_fraction=fmt.val_fraction,
        test_fraction=fmt.test_fraction,
        seed=fmt.seed,
    )
    valid = splits.fill_empty_splits(valid, val_fraction=fmt.val_fraction, test_fraction=fmt.test_fraction)
    # Near duplicates, in the run and against earlier runs' signed examples, share one split.
    valid, signed, leakage = signatures.split_apart(
        ctx, valid, examples=TABLE.name, block="function", text=splits.SPLIT_TEXT
    )
    tables.overwrite(spark, rt, TABLE, valid.select(TABLE.row_names), run_id=cfg.run_id)  # derived from the verdicts
    table = tables.read(spark, rt, TABLE)
    added = signatures.record(ctx, signed, examples=TABLE.name, job="lakesynth_tools", kept=table)
    folder = Path(rt.files_dir(TABLE.name))
    files = {}
    for split in ("train", "val", "test"):
        if split == "test" and not fmt.test_fraction:
            continue
        target = folder / f"{split}.jsonl"
        examples.write_jsonl(table.where(F.col("split") == split), target, STYLES[out.style])
        files[f"tools_{split}_jsonl"] = str(target)
    counts = {r.split: r["count"] for r in table.groupBy("split").count().collect()}
    strata = {f"{r.function}/{r.category}": r["count"] for r in table.groupBy("function", "category").count().collect()}
    asked = ctx.read("tools").select(F.col("name").alias("function"))
    alike = diversity.measured(ctx, valid, by="function", text=splits.SPLIT_TEXT, asked=asked, name=TABLE.name)
    tables.overwrite(spark, rt, DIVERSITY, alike, run_id=cfg.run_id)
    alike = diversity.figures(tables.read(spark, rt, DIVERSITY))
    violations = {
        r.violation: r["count"] for r in checked.where("violation IS NOT NULL").groupBy("violation").count().collect()
    }
    return StageResult(
        rows_in=len(rows),
        rows_out=sum(counts.values()),
        errors=sum(violations.values()),
        tables=[TABLE],
        files=files,
        metrics={
            "style": out.style,
            "violations": violations,
            **leakage,
            "signatures_added": added,
            "diversity": alike,
            "examples_per_function_and_category": dict(sorted(strata.items())),
            **{f"{k}_examples": v for k, v in sorted(counts.items())},
        },
    )


STAGE = Stage(
    name="tool_format",
    help="turn the kept calls into tool-calling training examples (json_content, openai or hf) and JSONL per split",
    run=run,
    reads=("tools", "call_verdicts", "tool_calls", "tool_dialogs"),
    writes=(TABLE, DIVERSITY),
    config=ToolOutputConfig,
    section="tools.output",
)
