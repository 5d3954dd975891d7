"""Tool export stage: the function-calling job's kept pairs as a Hugging Face `datasets` folder and Parquet, with
a dataset card, as `export` does for chat data (off unless `export.enabled`; same settings, same Hub push).

`<volume>/export/<run_id>-tools/`: `tools/` (`DatasetDict.save_to_disk`, one split per split of `training_tools`) and
`parquet/tools/<split>.parquet`, in the layout of Salesforce's xlam-function-calling-60k (APIGen's dataset): `query`,
`answers` (the calls as JSON text, `[{"name", "arguments"}]`) and `tools` (the functions offered, as JSON text), with
`example_id`, `source_id` (the input line or generation request), `function` and `category`. JSON text, as there,
because each tool's arguments have their own shape and Arrow needs one per column. `README.md` is the card: the
config, counts per split and per function and category, what made the pairs and what each check dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import functions as F

from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.errors import StageError
from lakesynth.training import datasets as exporting

CONFIG = "tools"  # the dataset config's name: beside the chat data's `default` in one Hub repo
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


def card(ctx: RunContext, splits: dict, made: dict) -> str:
    strata: dict[tuple[str, str], dict[str, int]] = {}
    for split, rows in splits.items():
        for (function, category), n in rows.groupby(["function", "category"]).size().items():
            strata.setdefault((function, category), {})[split] = int(n)
    names = sorted(splits)
    strata_rows = "\n".join(
        f"| {f} | {c} | " + " | ".join(str(n.get(s, 0)) for s in names) + " |" for (f, c), n in sorted(strata.items())
    )
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
{exporting.config_metadata(CONFIG, splits, CONFIG)}
---

# {ctx.cfg.use_case.name}: synthetic function-calling data made by lakesynth

Queries and the function calls that answer them (`answers`, JSON text of `[{{"name", "arguments"}}]`, an empty list
when no tool fits), with the tools offered (`tools`, JSON text), as in xlam-function-calling-60k. Every pair passed
the format check against each tool's JSON Schema and, where they ran, execution, the semantic and relevance checks
and dedup.

- Run: `{made["run_id"]}`; config sha256 `{made["config_sha256"]}`
- Pairs per split: {", ".join(f"{s} {len(r)}" for s, r in sorted(splits.items()))}

## Pairs per function, category and split

| function | category | {" | ".join(names)} |
|---|---|{"---|" * len(names)}
{strata_rows}

{exporting.provenance_sections(made)}
"""


def run(ctx: RunContext) -> StageResult:
    export = ctx.cfg.export
    exporting.datasets_module()
    splits = pairs(ctx)
    if not splits:
        raise StageError("tool_export: training_tools has no examples; run the tool_format stage first")
    folder = Path(ctx.rt.files_dir(f"export/{ctx.cfg.run_id}-tools"))  # its own card, beside the chat export's
    dataset = exporting.write_config(folder, CONFIG, splits, CONFIG)
    dropped = {
        r.drop_reason: r["count"]
        for r in ctx.read("call_verdicts", kept=False).where("NOT keep").groupBy("drop_reason").count().collect()
    }
    made = {**exporting.made_by(ctx, MADE_BY), "dropped": dict(sorted(dropped.items()))}
    exporting.write_card(folder, card(ctx, splits, made), made)
    metrics = {f"{s}_pairs": len(r) for s, r in sorted(splits.items())}
    metrics["hub"] = exporting.push(export, {CONFIG: dataset})
    rows = sum(len(r) for r in splits.values())
    return StageResult(rows_in=rows, rows_out=rows, files={"export": str(folder)}, metrics=metrics)


STAGE = Stage(
    name="tool_export",
    help="write the kept function-calling pairs as a Hugging Face datasets folder and Parquet with its dataset card",
    run=run,
    reads=("tools", "training_tools", "call_verdicts"),
    config=exporting.ExportConfig,
    section="export",
)
