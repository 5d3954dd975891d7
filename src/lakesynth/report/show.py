"""`lakesynth show TABLE`: a table's rows beside their verdicts and reasons, in the terminal, without code.

A verdict table (`pair_verdicts`, `call_verdicts`, ...) carries its `keep` and `drop_reason`; any other table gets
those of the checks that judge it (the registry's verdict tables on it, in stage order: `keep` is false where one
dropped the row, `drop_reason` the first one's reason), with each check's score, reasoning and error. Columns
that are empty in every row shown, a call's bookkeeping (fingerprint, tokens, latency ...), ids and models are left
out; long texts are cut. With --dropped it names the checks that are off (none of them dropped a row).
"""

from __future__ import annotations

from typing import Any

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.core import tables
from lakesynth.core.stage import Stage
from lakesynth.errors import ConfigError
from lakesynth.report.notebook import NoTables, NotebookContext

HIDDEN = {n for n, _ in tables.LLM_ACCOUNTING if n not in ("model", "error")} | set(tables.LINEAGE_NAMES)
WIDTH = 240  # characters of a cell shown
GRID_COLUMNS = 5  # more columns than this shrink text to a few characters a line: one block per row instead
VERDICT_TEXT = ("score", "scores", "reasoning", "error")  # what a check said, shown beside a table it judges


def frame(ctx: NotebookContext, stages: dict[str, Stage], table: str, *, where: str = "", dropped: bool = False):
    """The rows of `table` with `keep` and `drop_reason` (its own, or the first of the checks that judge it);
    `where` a SQL condition on them, `dropped` only the rows a check dropped."""
    contract = ctx.contracts.get(table)
    if contract is None:
        raise ConfigError(f"show: no table named '{table}'; the tables: {', '.join(sorted(ctx.contracts))}")
    if not ctx.exists(table):
        raise NoTables(f"show: {ctx.where()} has no table {table}: run the stage that writes it first")
    rows: DataFrame = ctx.spark.table(ctx.rt.fqn(table))
    if not contract.verdict_of:
        order = list(stages)
        checks = sorted(
            ((s.name, t) for s in stages.values() for t in s.writes if t.verdict_of == table and ctx.exists(t.name)),
            key=lambda c: order.index(c[0]),
        )
        reasons = []
        for i, (stage, check) in enumerate(checks):
            why = F.when(~F.coalesce(F.col("keep"), F.lit(False)), F.coalesce("drop_reason", F.lit(stage)))
            said = [F.col(c).alias(f"{stage}_{c}") for c in VERDICT_TEXT if c in check.names]  # the check's why
            part = ctx.spark.table(ctx.rt.fqn(check.name))
            part = part.select(F.col(check.key).alias(contract.key), why.alias(f"_r{i}"), *said)
            rows = rows.join(part, contract.key, "left")
            reasons.append(f"_r{i}")
        first = F.coalesce(*reasons) if reasons else F.lit(None).cast("string")
        rows = rows.withColumn("drop_reason", first).withColumn("keep", first.isNull()).drop(*reasons)
    if where:
        try:
            rows = rows.where(where)
            _ = rows.schema  # analysed here, so a bad condition is named, not a trace
        except (AnalysisException, ParseException) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"show {table}: --where {where!r} is not a condition on its columns: {first}") from exc
    if dropped:
        rows = rows.where(~F.coalesce(F.col("keep"), F.lit(False)))
    return rows


def show(ctx: NotebookContext, stages: dict[str, Stage], table: str, *, n: int = 10, where: str = "",
         dropped: bool = False, console=None) -> list[dict[str, Any]]:  # fmt: skip
    """Print up to `n` rows of `table` (frame), verdict columns first: a grid while it has at most GRID_COLUMNS
    columns, else one block per row (`name  value` lines), which stays readable at 80 columns or piped; returns
    them."""
    from rich.console import Console
    from rich.table import Table as Grid

    rows = frame(ctx, stages, table, where=where, dropped=dropped)  # first: it names an unknown table
    contract = ctx.contracts[table]
    total = rows.count()
    shown = [r.asDict() for r in rows.orderBy(contract.key).limit(n).collect()]
    first = [contract.key, "keep", "drop_reason"]
    names = first + [c for c in rows.columns if c not in first and not hidden(c)]
    names = [c for c in names if c in first or any(r.get(c) not in (None, "") for r in shown)]
    what = "dropped rows" if dropped else "rows"
    title = f"{table}: {len(shown)} of {total} {what} ({ctx.where()})"
    console = console or Console()
    if len(names) <= GRID_COLUMNS:
        grid = Grid(title=title, show_lines=True)
        for name in names:
            grid.add_column(name, overflow="fold", no_wrap=name in first, max_width=None if name in first else 60)
        for r in shown:
            grid.add_row(*[cell(r.get(c)) for c in names])
        console.print(grid)
    else:
        console.print(title, soft_wrap=True)  # one line, whole, to find and copy from
        for r in shown:
            block = Grid.grid(padding=(0, 2))
            block.add_column(no_wrap=True, style="bold")
            block.add_column(overflow="fold")
            for name in names:
                block.add_row(name, cell(r.get(name)))
            console.rule()
            console.print(block, soft_wrap=False)
    off = checks_off(ctx.cfg, ctx.contracts, stages, table) if dropped else []
    if off:  # a check that did not run dropped nothing: an empty list is not "all kept"
        console.print(f"checks off, which drop nothing: {'; '.join(off)}")
    return shown


def checks_off(cfg, contracts: dict[str, tables.Table], stages: dict[str, Stage], table: str) -> list[str]:
    """Why each check whose verdicts drop `table`'s rows is off under `cfg` (Stage.why_off), in stage order: for
    a verdict table, its writer's and those of the verdict tables it combines; else those of the verdict tables on
    it."""
    writers = {t.name: s for s in stages.values() for t in s.writes}
    if contracts[table].verdict_of:
        writer = writers.get(table)
        names = [table, *(r for r in (writer.reads if writer else ()) if r in contracts and contracts[r].verdict_of)]
    else:
        names = [name for name, c in contracts.items() if c.verdict_of == table]
    checks = {writers[name].name for name in names if name in writers}
    return [why for s in stages.values() if s.name in checks and (why := s.why_off(cfg))]


def hidden(column: str) -> bool:
    """A column left out of the table shown: lineage, a call's bookkeeping, another row's id, a model or prompt
    version (`lakesynth show` is for reading the rows and why they were dropped; the table has the rest)."""
    return column in HIDDEN or column.endswith(("_id", "model", "prompt_version"))


def cell(value: Any) -> str:
    """A value as shown: text cut at WIDTH characters."""
    text = "" if value is None else str(value)
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"
