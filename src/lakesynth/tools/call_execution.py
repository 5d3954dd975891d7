"""Call execution check: the calls that passed the format check, run with their arguments against the user's
implementations -> `call_execution_verdicts`.

Each call runs in a reused pool of worker processes with a timeout and a memory limit (sandbox.py), or, for an
`mcp:` spec, through one session with the MCP server, `processes` calls in flight (mcp_server.py); an exception
(an MCP `isError` result), a timeout or a crash fails the row with the error kept (`drop_reason`
`execution:<ErrorType>`), and every call's result is stored, for the semantic check and the responses to read. A
row is run once per version of the module (its hash; a server's: its tool listing's): a rerun on the same
implementations calls nothing again. Without implementations it is skipped, and the
stages after it go on: each row's `execution` in call_verdicts says `not run`.
"""

from __future__ import annotations

import json

from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import D, S
from lakesynth.errors import StageSkipped


class CallExecutionConfig(Section):
    enabled: bool = Field(True, description="Run each call against the implementations, when they are given.")
    timeout_s: float = Field(5.0, gt=0, description="Longest a call may run.")
    memory_mb: int = Field(512, ge=64, description="Address-space limit of each worker process.")
    processes: int = Field(
        2, ge=1, description="Worker processes (reused across calls); with an MCP server, its calls in flight at once."
    )
    chunk_rows: int = Field(1000, ge=1, description="Rows run and written at a time.")


TABLE = tables.verdict(
    "call_execution_verdicts",
    [("call_id", S), ("source_id", S), ("module_sha", S), ("results", S), ("seconds", D)],
    judges="tool_calls",
    key="call_id",
)


def verdict(outcomes: list) -> tuple[list[dict], bool, str | None]:
    """One row's results (per call: name, ok, result or error, seconds), whether all ran, and the first failure."""
    results = [
        {"name": name, "ok": o.ok, "result": json.loads(o.result) if o.ok else None, "error": o.error}
        | {"seconds": round(o.seconds, 4)}
        for name, o in outcomes
    ]
    failed = next((r for r in results if not r["ok"]), None)
    reason = f"execution:{failed['error'].split(':', 1)[0]}" if failed else None
    return results, failed is None, reason


def run(ctx: RunContext) -> StageResult:
    from lakesynth.tools import mcp_server, sandbox

    cfg, spark, rt = ctx.cfg, ctx.spark, ctx.rt
    settings = cfg.tools.execution
    tools = ctx.read("tools").select("module", "module_sha").where(F.col("module").isNotNull()).limit(1).collect()
    if not tools:
        # A check not run, not a failure: call_verdicts says `execution: not run` on every row and the job goes on.
        raise StageSkipped(
            "not run: no implementations to run the calls with (pass --functions FILE.py, a .py --tools or mcp:); "
            "call_verdicts records execution as not run"
        )
    module, sha = tools[0]["module"], tools[0]["module_sha"]
    formatted = ctx.read("call_format_verdicts", kept=False).where("keep").select("call_id")
    done = tables.read(spark, rt, TABLE).where(F.col("module_sha") == sha).select("call_id")
    todo = (
        ctx.read("tool_calls", kept=False)
        .join(formatted, "call_id", "left_semi")
        .join(done, "call_id", "left_anti")
        .select("call_id", "source_id", "calls")
        .orderBy("call_id")
        .collect()
    )
    written = 0
    if todo:
        if mcp_server.is_mcp(module):
            runner = mcp_server.McpTools(
                module, cfg.tools.mcp, timeout_s=settings.timeout_s, concurrency=settings.processes, listing_sha=sha
            )
        else:
            runner = sandbox.Sandbox(
                module, workers=settings.processes, timeout_s=settings.timeout_s, memory_mb=settings.memory_mb
            )
        with runner as box:
            for start in range(0, len(todo), settings.chunk_rows):
                part = todo[start : start + settings.chunk_rows]
                calls = [(r.call_id, c) for r in part for c in json.loads(r.calls)]
                outcomes = box.run([(c["name"], c["arguments"]) for _, c in calls])
                by_row: dict[str, list] = {r.call_id: [] for r in part}
                for (call_id, call), outcome in zip(calls, outcomes):
                    by_row[call_id].append((call["name"], outcome))
                rows = []
                for r in part:
                    results, ok, reason = verdict(by_row[r.call_id])
                    seconds = sum(x["seconds"] for x in results)
                    text = json.dumps(results, ensure_ascii=False)
                    rows.append((r.call_id, r.source_id, sha, text, seconds, ok, reason))
                frame = spark.createDataFrame(rows, schema=TABLE.row_schema)
                tables.upsert(spark, rt, TABLE, frame, run_id=cfg.run_id)
                written += len(rows)
    verdicts = tables.read(spark, rt, TABLE)
    counts = tables.verdict_counts(verdicts.join(formatted, "call_id", "left_semi"))
    return StageResult(rows_in=len(todo), rows_out=written, tables=[TABLE], metrics=counts)


STAGE = Stage(
    name="call_execution",
    help="run each well-formed call against the implementations (sandboxed) into call_execution_verdicts",
    run=run,
    reads=("tools", "tool_calls", "call_format_verdicts"),
    writes=(TABLE,),
    config=CallExecutionConfig,
    section="tools.execution",
)
