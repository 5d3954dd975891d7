"""Tool export stage: the function-calling job's kept pairs as a Hugging Face `datasets` folder and Parquet, with
a dataset card, as `export` does for chat data (off unless `export.enabled`; same settings, same Hub push).

`<volume>/export/<run_id>-tools/`: `tools/` (`DatasetDict.save_to_disk`, one split per split of `training_tools`) and
`parquet/tools/<split>.parquet`, in the layout of Salesforce's xlam-function-calling-60k (APIGen's dataset): `query`,
`answers` (the calls as JSON text, `[{"name", "arguments"}]`) and `tools` (the functions offered, as JSON text), with
`example_id`, `source_id` (the input line or generation request), `function` and `category`. JSON text, as there,
because each tool's arguments have their own shape and Arrow needs one per column. The xlam layout holds one query
and its calls, no tool result and no reply, so the multi-step examples (`tools.trajectories`: the calls' results and
the final answer; `tools.dialogs`: multi-turn dialogs) are a config of their own, `multi_step/` and
`parquet/multi_step/<split>.parquet`, in the same splits as `training_tools`: `messages` in OpenAI's chat form
(`role`, `content`, assistant `tool_calls` with `arguments` as JSON text, `tool` messages with their `tool_call_id`
and what the sandbox returned), whatever `tools.output.style` the training files use, and `tools` (the OpenAI tools
list, as JSON text). A trajectory's query and calls are also a row of `tools`. `README.md` is the card: the
configs, counts per split and per function and category, what made the pairs and what each check dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import functions as F

from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.errors import StageError
from lakesynth.tools import answer_check, steps
from lakesynth.training import datasets as exporting
from lakesynth.training import examples

CONFIG = "tools"  # the dataset config's name: beside the chat data's `default` in one Hub repo
STEPS = "multi_step"  # the trajectories' and dialogs' config: the xlam layout has no room for their steps
MADE_BY = ("call_generation", "call_semantic", "call_relevance")  # the LLM stages whose models the card names


def pairs(ctx: RunContext) -> dict:
    """The kept pairs as one pandas frame per split, in the xlam layout."""
    functions = [json.loads(r.spec)["function"] for r in ctx.read("tools").orderBy("name").select("spec").collect()]
    offered = json.dumps(functions, ensure_ascii=False)
    kept = ctx.read("training_tools").select("example_id", "source_id", "function", "category", "split")
    verdicts = ctx.read("call_verdicts", kept=False).select(F.col("call_id").alias("example_id"), "query", "calls")
    frame = kept.join(verdicts, "example_id").orderBy("example_id").toPandas()
    if frame.empty:
        return {}
    frame["answers"] = [
        json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in json.loads(calls)], ensure_ascii=False)
        for calls in frame["calls"]
    ]
    frame["tools"] = offered
    columns = ["example_id", "source_id", "function", "category", "query", "answers", "tools"]
    return {split: rows[columns].reset_index(drop=True) for split, rows in frame.groupby("split")}


def multi_step(ctx: RunContext) -> dict:
    """The kept trajectories and dialogs of `training_tools` as OpenAI-style messages, one pandas frame per split."""
    said: dict[str, tuple[str, list[dict]]] = {}
    answered = ctx.read("call_verdicts", kept=False).where("keep AND answer IS NOT NULL")
    for r in answered.select("call_id", "query", "calls", "execution_results", "answer").collect():
        calls = json.loads(r.calls)
        if calls:  # as tool_format makes a trajectory
            returned = answer_check.returned(r.execution_results)
            said[r.call_id] = ("trajectory", steps.trajectory(r.query, calls, returned, r.answer))
    if ctx.cfg.tools.dialogs.enabled:
        for r in ctx.read("tool_dialogs", kept=False).where("keep").select("blueprint_id", "messages").collect():
            said[r.blueprint_id] = ("dialog", json.loads(r.messages))
    columns = ["example_id", "source_id", "function", "category", "split"]
    frame = ctx.read("training_tools").select(*columns).orderBy("example_id").toPandas()
    frame = frame[frame["example_id"].isin(list(said))]
    if frame.empty:
        return {}
    specs = [json.loads(r.spec) for r in ctx.read("tools").orderBy("name").select("spec").collect()]
    frame["kind"] = [said[i][0] for i in frame["example_id"]]
    frame["messages"] = [
        [examples.message(m["role"], m.get("content"), m.get("tool_calls"), m.get("tool_call_id")) for m in said[i][1]]
        for i in frame["example_id"]
    ]
    frame["tools"] = json.dumps(specs, ensure_ascii=False, sort_keys=True)
    columns = ["example_id", "source_id", "function", "category", "kind", "messages", "tools"]
    return {split: rows[columns].reset_index(drop=True) for split, rows in frame.groupby("split")}


def card(ctx: RunContext, splits: dict, made: dict, multi: dict) -> str:
    strata: dict[tuple[str, str], dict[str, int]] = {}
    for split, rows in splits.items():
        for (function, category), n in rows.groupby(["function", "category"]).size().items():
            strata.setdefault((function, category), {})[split] = int(n)
    names = sorted(splits)
    strata_rows = "\n".join(
        f"| {f} | {c} | " + " | ".join(str(n.get(s, 0)) for s in names) + " |" for (f, c), n in sorted(strata.items())
    )
    metadata = "\n".join(exporting.config_metadata(n, d, n) for n, d in ((CONFIG, splits), (STEPS, multi)) if d)
    return f"""---
license: {ctx.cfg.export.license}
task_categories:
- text-generation
language:
- en
tags:
- synthetic
- function-calling
- lakesynth
configs:
{metadata}
---

# {ctx.cfg.use_case.name}: synthetic function-calling data made by lakesynth

Queries and the function calls that answer them (`answers`, JSON text of `[{{"name", "arguments"}}]`, an empty list
when no tool fits), with the tools offered (`tools`, JSON text), as in xlam-function-calling-60k. Every pair passed
the format check against each tool's JSON Schema and, where they ran, execution, the semantic and relevance checks
and dedup.

- Run: `{made["run_id"]}`; config sha256 `{made["config_sha256"]}`
- Pairs per split: {", ".join(f"{s} {len(r)}" for s, r in sorted(splits.items()))}
{steps_section(multi)}
## Pairs per function, category and split

| function | category | {" | ".join(names)} |
|---|---|{"---|" * len(names)}
{strata_rows}

{exporting.provenance_sections(made)}
"""


def steps_section(multi: dict) -> str:
    """The card's lines on the `multi_step` config ("" without one)."""
    if not multi:
        return ""
    kinds: dict[str, int] = {}
    for rows in multi.values():
        for kind, n in rows["kind"].value_counts().items():
            kinds[kind] = kinds.get(kind, 0) + int(n)
    return f"""- Multi-step examples per split (config `{STEPS}`): {
        ", ".join(f"{s} {len(r)}" for s, r in sorted(multi.items()))
    } ({", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))})

The xlam layout above holds a query and its calls only. The multi-step examples are the config `{STEPS}`, in the
same splits as the training files: `messages` in OpenAI's chat form (assistant `tool_calls` with `arguments` as
JSON text; one `tool` message per call, with its `tool_call_id` and what the sandbox returned; then the assistant's
answer from them), and `tools`, the OpenAI tools list as JSON text. A `trajectory` is one query, its calls, their
results and the final answer (its query and calls are also a row of `{CONFIG}`); a `dialog` is a multi-turn dialog
between a simulated user and the assistant, kept because its calls reach the results of its task's blueprint.
"""


def run(ctx: RunContext) -> StageResult:
    export = ctx.cfg.export
    exporting.datasets_module()
    splits, multi = pairs(ctx), multi_step(ctx)
    if not splits and not multi:
        raise StageError("tool_export: training_tools has no examples; run the tool_format stage first")
    folder = Path(ctx.rt.files_dir(f"export/{ctx.cfg.run_id}-tools"))  # its own card, beside the chat export's
    written = {CONFIG: exporting.write_config(folder, CONFIG, splits, CONFIG)} if splits else {}
    if multi:
        written[STEPS] = exporting.write_config(folder, STEPS, multi, STEPS)
    dropped = {
        r.drop_reason: r["count"]
        for r in ctx.read("call_verdicts", kept=False).where("NOT keep").groupBy("drop_reason").count().collect()
    }
    made = {**exporting.made_by(ctx, MADE_BY), "dropped": dict(sorted(dropped.items()))}
    exporting.write_card(folder, card(ctx, splits, made, multi), made)
    metrics = {f"{s}_pairs": len(r) for s, r in sorted(splits.items())}
    metrics.update({f"{s}_multi_step": len(r) for s, r in sorted(multi.items())})
    metrics["hub"] = exporting.push(export, written)
    rows = sum(len(r) for r in splits.values()) + sum(len(r) for r in multi.values())
    return StageResult(rows_in=rows, rows_out=rows, files={"export": str(folder)}, metrics=metrics)


STAGE = Stage(
    name="tool_export",
    help="write the kept function-calling pairs, and the multi-step trajectories and dialogs, as a Hugging Face "
    "datasets folder and Parquet with its dataset card",
    run=run,
    reads=("tools", "training_tools", "call_verdicts", "tool_dialogs"),
    config=exporting.ExportConfig,
    section="export",
)
