"""Calls stage: a JSONL of function-calling pairs made elsewhere (`--calls`) -> `tool_calls`, one row per line.

Each line is `{"query": ..., "function_calls": [{"function_name": ..., "arguments": {...}}]}` (the APIGen seed
format) or carries OpenAI `tool_calls`; an empty list is a query no tool fits (irrelevance). Nothing is dropped
here: a line that is not JSON, or whose calls cannot be read, is a row with its `problem`, which the format check
turns into a verdict, so every input line ends with one (`call_verdicts`). `source_id` is the line's `id`, or its
1-based line number. The table mirrors the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pyspark.sql import functions as F

from lakesynth import tables, toolspec
from lakesynth.errors import SeedError, StageSkipped
from lakesynth.stage import RunContext, Stage, StageResult
from lakesynth.tables import S

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


def parse_line(text: str, number: int, path: str) -> dict:
    """One input line as a row; what cannot be read is its `problem`, not an exception."""
    row = {"source_id": str(number), "query": None, "calls": None, "category": None, "problem": None}
    try:
        line = json.loads(text)
        if not isinstance(line, dict):
            raise ValueError("the line is not a JSON object")
    except ValueError as exc:
        return {**row, "problem": f"not JSON: {exc}", "source": f"{path}#{number}"}
    if line.get("id") is not None:
        row["source_id"] = str(line["id"])
    query = line.get("query")
    row["query"] = query if isinstance(query, str) else None
    row["category"] = line.get("category") if isinstance(line.get("category"), str) else None
    try:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("no 'query' text")
        row["calls"] = json.dumps(toolspec.normalize_calls(line), ensure_ascii=False, sort_keys=True)
    except ValueError as exc:
        row["problem"] = str(exc)
    return {**row, "source": f"{path}#{number}"}


def read(path: str) -> list[dict]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedError(f"{path}: cannot read the calls file: {exc}") from None
    rows = [parse_line(t, n, path) for n, t in enumerate(text.splitlines(), start=1) if t.strip()]
    if not rows:
        raise SeedError(f"{path}: no calls (one JSON object per line)")
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["source_id"]] = seen.get(row["source_id"], 0) + 1
    repeated = sorted(k for k, v in seen.items() if v > 1)
    if repeated:
        raise SeedError(f"{path}: ids used on more than one line: {', '.join(repeated[:5])}")
    for row in rows:  # the same line content keeps its id across runs; a changed line is a new row
        content = json.dumps([row["source_id"], row["query"], row["calls"], row["problem"]])
        row["call_id"] = hashlib.sha256(content.encode()).hexdigest()[:16]
    return rows


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    if not cfg.tools.calls:
        raise StageSkipped("no calls to verify: pass --calls FILE.jsonl")
    rows = read(cfg.tools.calls)
    columns = [n for n in TABLE.names if n not in ("run_id", "created_at")]
    frame = ctx.spark.createDataFrame(
        [[r[c] for c in columns] for r in rows], schema=", ".join(f"{c} string" for c in columns)
    )
    frame = frame.withColumn("run_id", F.lit(cfg.run_id)).withColumn("created_at", F.current_timestamp())
    fqn = tables.ensure(ctx.spark, ctx.rt, TABLE)
    tables.conform(frame, TABLE).write.mode("overwrite").insertInto(fqn)  # the table mirrors the file
    unreadable = sum(1 for r in rows if r["problem"])
    return StageResult(rows_in=len(rows), rows_out=len(rows), tables=[TABLE], metrics={"unreadable": unreadable})


STAGE = Stage(
    name="calls",
    help="read function-calling pairs to verify (--calls JSONL) into tool_calls, one row per line",
    run=run,
    reads=("tools",),
    writes=(TABLE,),
)
