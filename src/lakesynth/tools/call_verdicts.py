"""Call verdicts: every row of `tool_calls` with every check's verdict beside it, then dedup -> `call_verdicts`.

One row per input line and generated pair, with the user's `source_id`, its format issues, invented arguments,
execution results and `execution` (`passed`, `failed` or `not run: <why>`: no implementations, the check off, the
format check failed), the final `answer` (with `tools.trajectories` on), the semantic checker's reasoning, the
relevance check's score, the duplicate groups, `keep`, and the first check that failed as `drop_reason` (format,
invented_argument, execution, the answer's check, semantic, relevance, then exact_duplicate, near_duplicate,
semantic_duplicate). A check that is off, or did not run on a row (execution runs only well-formed calls, and only
with implementations), keeps it. Dedup compares the queries as the Q&A job's dedup compares questions, with its
settings (`quality.dedup.*`; semantic matches within each function), and keeps one pair per group: one that passed
the other checks, then the lowest id. This is the table a user of `--calls` reads: nothing in the input is left
without a verdict.
"""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import S
from lakesynth.quality import duplicates

D = tables.T.DoubleType()


class CallDedupConfig(Section):
    enabled: bool = Field(True, description="Drop duplicate queries, as quality.dedup.* says (exact, near, semantic).")


TABLE = tables.verdict(
    "call_verdicts",
    [
        ("call_id", S),
        ("source_id", S),
        ("query", S),
        ("calls", S),
        ("category", S),
        ("function", S),
        ("format_issues", S),
        ("invented_arguments", S),
        ("execution_results", S),
        ("execution", S),
        ("answer", S),
        ("semantic_reasoning", S),
        ("semantic_model", S),
        ("relevance_score", D),
        ("relevance_queries", S),
        ("relevance_model", S),
        ("exact_group", S),
        ("near_group", S),
        ("near_similarity", D),
        ("semantic_group", S),
        ("semantic_similarity", D),
    ],
    judges="tool_calls",
    key="call_id",
)


def execution(implemented: bool, enabled: bool) -> F.Column:
    """What the execution check did with a row: `passed`, `failed`, or `not run: <why>`. A check that could not
    run is recorded as such, so a kept row says it was never run, rather than that it ran well."""
    why = (
        "no implementations (--functions)"
        if not implemented
        else "tools.execution.enabled is false"
        if not enabled
        else None
    )
    status = F.when(F.col("e_keep"), F.lit("passed")).when(~F.col("e_keep"), F.lit("failed"))
    if why:
        return F.coalesce(status, F.lit(f"not run: {why}"))
    not_run = F.when(F.col("f_keep").isNull() | ~F.col("f_keep"), F.lit("not run: failed the format check"))
    return F.coalesce(status, not_run, F.lit("not run: not executed yet (run call_execution)"))


def checked(ctx: RunContext):
    """Every pair with each check's verdict beside it, and `_earlier`: the first check that dropped it."""
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
    arguments = ctx.read("call_argument_verdicts", kept=False).select(
        "call_id",
        F.col("invented").alias("invented_arguments"),
        F.col("keep").alias("a_keep"),
        F.col("drop_reason").alias("a_why"),
    )
    ran = ctx.read("call_execution_verdicts", kept=False).where(F.col("module_sha").isin(sha))
    ran = ran.select(
        "call_id",
        F.col("results").alias("execution_results"),
        F.col("keep").alias("e_keep"),
        F.col("drop_reason").alias("e_why"),
    )
    answered = ctx.read("tool_trajectories", kept=False).select(
        "call_id", "answer", F.col("keep").alias("t_keep"), F.col("drop_reason").alias("t_why")
    )
    if not ctx.cfg.tools.trajectories.enabled:  # answers an earlier run wrote are not this run's examples
        answered = answered.where(F.lit(False))
    judged = ctx.read("call_semantic_verdicts", kept=False).select(
        "call_id",
        F.col("reasoning").alias("semantic_reasoning"),
        F.col("model").alias("semantic_model"),
        F.col("keep").alias("s_keep"),
        F.col("drop_reason").alias("s_why"),
    )
    relevant = ctx.read("call_relevance_verdicts", kept=False).select(
        "call_id",
        F.col("score").alias("relevance_score"),
        F.col("queries").alias("relevance_queries"),
        F.col("model").alias("relevance_model"),
        F.col("keep").alias("r_keep"),
        F.col("drop_reason").alias("r_why"),
    )
    joined = calls
    for verdicts in (form, arguments, ran, answered, judged, relevant):
        joined = joined.join(verdicts, "call_id", "left")
    joined = joined.withColumn("execution", execution(bool(sha), ctx.cfg.tools.execution.enabled))
    checks = ("f", "a", "e", "t", "s", "r")
    earlier = F.coalesce(*[F.when(F.col(f"{c}_keep") == F.lit(False), F.col(f"{c}_why")) for c in checks])
    first_call = F.get_json_object("calls", "$[0].name")
    return joined.withColumn("_earlier", earlier).withColumn("function", F.coalesce(first_call, F.lit("none")))


def run(ctx: RunContext) -> StageResult:
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    rows = tables.materialize(spark, rt, "call_verdicts", checked(ctx))
    dedup = cfg.quality.dedup
    if not cfg.tools.dedup.enabled:  # every method off: no groups, no duplicates
        off = {m: getattr(dedup, m).model_copy(update={"enabled": False}) for m in ("exact", "near", "semantic")}
        dedup = dedup.model_copy(update=off)
    rows, groups = duplicates.mark(ctx, rows, dedup, id="call_id", text="query", block="function", best=F.lit(0))
    drop_reason = F.coalesce("_earlier", "_duplicate")
    out = rows.select(
        *[c for c in TABLE.row_names if c not in ("keep", "drop_reason")],
        drop_reason.isNull().alias("keep"),
        drop_reason.alias("drop_reason"),
    )
    tables.overwrite(spark, rt, TABLE, out, run_id=cfg.run_id)  # derived whole from the checks
    written = tables.read(spark, rt, TABLE)
    n = written.count()
    exact = written.where("exact_group IS NOT NULL").select("exact_group").distinct().count()
    ran = {r.execution: r["count"] for r in written.groupBy("execution").count().collect()}
    return StageResult(
        rows_in=n,
        rows_out=n,
        tables=[TABLE],
        metrics={
            **tables.verdict_counts(written),
            "exact_groups": exact,
            **groups,
            "execution": dict(sorted(ran.items())),
        },
    )


STAGE = Stage(
    name="call_verdicts",
    help="every input and generated call with each check's verdict, dedup, keep and the first drop reason, into "
    "call_verdicts",
    run=run,
    reads=(
        "tool_calls",
        "tools",
        "call_format_verdicts",
        "call_argument_verdicts",
        "call_execution_verdicts",
        "tool_trajectories",
        "call_semantic_verdicts",
        "call_relevance_verdicts",
    ),
    writes=(TABLE,),
    config=CallDedupConfig,
    section="tools.dedup",
    off=lambda cfg: "",  # always on: its section's `enabled` switches its dedup only, the verdicts are always combined
)
