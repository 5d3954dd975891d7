"""Calls stage: the pairs to check -> `tool_calls`: each line of `--calls` (pairs made elsewhere) and each pair
`call_generation` wrote from `--seeds`.

Each line is `{"query": ..., "function_calls": [{"function_name": ..., "arguments": {...}}]}` (the APIGen seed
format) or carries OpenAI `tool_calls`; an empty list is a query no tool fits (irrelevance). Nothing is dropped
here: a line that is not JSON, or whose calls cannot be read, is a row with its `problem`, which the format check
turns into a verdict, so every input line ends with one (`call_verdicts`). `source_id` is the line's `id`, or its
1-based line number. A generated pair's `source_id` is its request, its `source` "generated". The table mirrors
its sources, whole.
"""

from __future__ import annotations

from pyspark.sql import functions as F

from lakesynth.core import tables
from lakesynth.core.sources import Source
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import S
from lakesynth.errors import StageSkipped
from lakesynth.tools import spec as toolspec

TABLE = tables.contract(
    "tool_calls",
    [
        ("call_id", S),
        ("source_id", S),
        ("query", S),
        ("calls", S),
        ("category", S),
        ("problem", S),
        ("source", S),
    ],
    key="call_id",
    parent="source",
)
GENERATED = "generated"  # the `source` of a pair call_generation wrote


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    if not cfg.tools.calls and not cfg.tools.seeds:
        raise StageSkipped("no calls to verify or generate from: pass --calls FILE.jsonl or --seeds FILE.jsonl")
    columns = TABLE.row_names
    schema = ", ".join(f"{c} string" for c in columns)
    rows = toolspec.read_pairs(cfg.tools.calls) if cfg.tools.calls else []
    frame = ctx.spark.createDataFrame([[r[c] for c in columns] for r in rows], schema=schema)
    if cfg.tools.seeds and cfg.tools.generation.enabled:  # the generated pairs that came back (a failed request
        # stays in generated_calls with its error)
        generated = ctx.read("generated_calls").where(F.col("error").isNull() & F.col("calls").isNotNull())
        frame = frame.unionByName(
            generated.select(
                F.sha2(F.concat_ws("|", "request_id", "query", "calls"), 256).substr(1, 16).alias("call_id"),
                F.col("request_id").alias("source_id"),
                "query",
                "calls",
                "category",
                F.lit(None).cast("string").alias("problem"),
                F.lit(GENERATED).alias("source"),
            )
        )
    tables.overwrite(ctx.spark, ctx.rt, TABLE, frame, run_id=cfg.run_id)  # the table mirrors its sources
    generated = tables.read(ctx.spark, ctx.rt, TABLE).where(F.col("source") == GENERATED).count()
    metrics = {"from_file": len(rows), "generated": generated, "unreadable": sum(1 for r in rows if r["problem"])}
    n = len(rows) + generated
    return StageResult(rows_in=n, rows_out=n, tables=[TABLE], metrics=metrics)


STAGE = Stage(
    name="calls",
    help="the function-calling pairs to check: the --calls lines and the generated pairs, into tool_calls",
    run=run,
    reads=("tools", "generated_calls"),
    writes=(TABLE,),
    # Pairs to verify and seeds to generate from are each what the run is about: either replaces the other.
    sources=(
        Source(
            "calls",
            ("tools.calls",),
            ("tools.seeds",),
            "function-calling job: JSONL of query/function_calls pairs to verify",
        ),
    ),
)
