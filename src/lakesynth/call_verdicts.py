"""Call verdicts: every row of `tool_calls` with every check's verdict beside it -> `call_verdicts`.

One row per input line, with the user's `source_id`, its format issues, execution results and the semantic
checker's reasoning, `keep`, and the first check that failed as `drop_reason` (format, execution, semantic). A
check that is off, or did not run on a row (execution runs only well-formed calls, and only with
implementations), keeps it. This is the table a user of `--calls` reads: nothing in the input is left without a
verdict.
"""

from __future__ import annotations

import functools
import operator

from pyspark.sql import functions as F

from lakesynth import tables
from lakesynth.stage import RunContext, Stage, StageResult
from lakesynth.tables import S

TABLE = tables.verdict(
    "call_verdicts",
    [
        ("call_id", S),
        ("source_id", S),
        ("query", S),
        ("calls", S),
        ("category", S),
        ("format_issues", S),
        ("execution_results", S),
        ("semantic_reasoning", S),
        ("semantic_model", S),
    ],
    judges="tool_calls",
    key="call_id",
)


def run(ctx: RunContext) -> StageResult:
    spark, rt = ctx.spark, ctx.rt
    calls = ctx.read("tool_calls", kept=False)
    form = ctx.read("call_format_verdicts", kept=False).select(
        "call_id",
        F.col("issues").alias("format_issues"),
        F.col("keep").alias("f_keep"),
        F.col("drop_reason").alias("f_why"),
    )
    sha = [
        r.module_sha for r in ctx.read("tools").select("module_sha").where("module_sha IS NOT NULL").limit(1).collect()
    ]
    ran = ctx.read("call_execution_verdicts", kept=False).where(F.col("module_sha").isin(sha))
    ran = ran.select(
        "call_id",
        F.col("results").alias("execution_results"),
        F.col("keep").alias("e_keep"),
        F.col("drop_reason").alias("e_why"),
    )
    judged = ctx.read("call_semantic_verdicts", kept=False).select(
        "call_id",
        F.col("reasoning").alias("semantic_reasoning"),
        F.col("model").alias("semantic_model"),
        F.col("keep").alias("s_keep"),
        F.col("drop_reason").alias("s_why"),
    )
    joined = calls.join(form, "call_id", "left").join(ran, "call_id", "left").join(judged, "call_id", "left")
    checks = ("f_keep", "e_keep", "s_keep")
    keep = functools.reduce(operator.and_, [F.coalesce(F.col(c), F.lit(True)) for c in checks])
    rows = joined.select(
        *[c for c, _ in TABLE.columns if c in joined.columns and c not in ("run_id", "created_at")],
        keep.alias("keep"),
        F.when(~keep, F.coalesce(F.col("f_why"), F.col("e_why"), F.col("s_why"))).alias("drop_reason"),
        F.lit(ctx.cfg.run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    )
    fqn = tables.ensure(spark, rt, TABLE)
    tables.conform(rows, TABLE).write.mode("overwrite").insertInto(fqn)  # derived whole from the checks
    written = tables.read(spark, rt, TABLE)
    n = written.count()
    return StageResult(rows_in=n, rows_out=n, tables=[TABLE], metrics=tables.verdict_counts(written))


STAGE = Stage(
    name="call_verdicts",
    help="every input call with each check's verdict, keep and the first drop reason, into call_verdicts",
    run=run,
    reads=("tool_calls", "tools", "call_format_verdicts", "call_execution_verdicts", "call_semantic_verdicts"),
    writes=(TABLE,),
)
