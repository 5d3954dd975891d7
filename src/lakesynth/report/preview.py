"""What a preview shows: each example beside every verdict on it (score, reasoning, keep, drop reason), printed in
the terminal, written as a Markdown file and returned as a pandas DataFrame; and two previews side by side.

The example tables are the rows the checks judge: answered pairs (synthetic_responses), function-calling pairs
(tool_calls) and taxonomy pairs (leaf_pairs). Every verdict table on them (a contract with `verdict_of`) adds its
columns, prefixed with its name, so a new check shows up here without a line changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lakesynth.core.tables import LINEAGE_NAMES, LLM_ACCOUNTING, Table

# Example table -> its unit (a seed, tool or leaf) and the columns that show the example itself.
EXAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "synthetic_responses": ("seed_id", ("topic", "question", "answer", "error")),
    "tool_calls": ("source_id", ("category", "query", "calls")),
    "leaf_pairs": ("leaf", ("leaf", "question", "answer", "error")),
}
# A verdict's own columns, without the lineage and accounting every LLM table carries (its error is shown).
NOT_SHOWN = {name for name, _ in LLM_ACCOUNTING if name != "error"} | set(LINEAGE_NAMES)


def examples(spark, rt, contracts: Mapping[str, Table]) -> pd.DataFrame:
    """One row per example of the schema `rt`: `table`, `unit`, `key`, its own columns, each verdict table's
    columns as `<verdict table>.<column>`, then `kept` (no verdict dropped it) and `drop_reason` (the first)."""
    frames = []
    for name, (unit, shown) in EXAMPLES.items():
        table = contracts[name]
        if not spark.catalog.tableExists(rt.fqn(name)):
            continue
        rows = spark.table(rt.fqn(name)).select(table.key, unit, *[c for c in shown if c != unit])
        own = set(rows.columns)
        verdicts = [v for v in contracts.values() if v.verdict_of == name and spark.catalog.tableExists(rt.fqn(v.name))]
        for v in verdicts:
            cols = [c for c, _ in v.columns if c not in NOT_SHOWN and c not in own and c != v.key]
            if "keep" not in cols:
                continue
            picked = spark.table(rt.fqn(v.name)).select(
                spark_col(v.key).alias(table.key), *[spark_col(c).alias(f"{v.name}.{c}") for c in cols]
            )
            rows = rows.join(picked, table.key, "left")
        frame = rows.toPandas()
        if frame.empty:
            continue
        frame = frame.sort_values([unit, table.key]).reset_index(drop=True)
        keeps = [c for c in frame.columns if c.endswith(".keep")]
        reasons = [c for c in frame.columns if c.endswith(".drop_reason")]
        frame.insert(0, "table", name)
        frame.insert(1, "unit", frame[unit].astype(str))
        frame.insert(2, "key", frame[table.key].astype(str))
        frame["kept"] = [not any(_dropped(v) for v in row) for row in frame[keeps].itertuples(index=False)]
        frame["drop_reason"] = [
            next((r for r in row if isinstance(r, str) and r), None) for row in frame[reasons].itertuples(index=False)
        ]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["table", "unit", "key", "kept"])


def _dropped(keep: Any) -> bool:
    """Whether a verdict's `keep` says dropped (a missing verdict, null or NaN, drops nothing)."""
    return keep is not None and not (isinstance(keep, float) and math.isnan(keep)) and not bool(keep)


def spark_col(name: str):
    from pyspark.sql import functions as F

    return F.col(f"`{name}`")


def plain(value: Any) -> str:
    """A cell as text: structs and lists as JSON, Spark Rows as dicts, missing as ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if hasattr(value, "asDict"):
        value = value.asDict(recursive=True)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=_default)
    return str(value)


def _default(value: Any) -> Any:
    return value.asDict(recursive=True) if hasattr(value, "asDict") else str(value)


def verdict_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if "." in c]


def scores(frame: pd.DataFrame) -> dict[str, float]:
    """The mean of each score column of the verdicts (a judge's per-criterion scores averaged per row)."""
    means = {}
    for col in verdict_columns(frame):
        if not col.rsplit(".", 1)[1].endswith(("score", "scores")):
            continue
        values = [v for v in (_score(x) for x in frame[col]) if v is not None]
        if values:
            means[col] = round(sum(values) / len(values), 3)
    return means


def _score(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float):
        return float(value)
    if hasattr(value, "asDict"):
        value = value.asDict(recursive=True)
    if isinstance(value, dict):  # {criterion: {reasoning, score}}
        found = [_score(v.get("score") if isinstance(v, dict) else v) for v in value.values()]
        found = [f for f in found if f is not None]
        return sum(found) / len(found) if found else None
    return None


def print_examples(frame: pd.DataFrame, console=None) -> None:
    """Each example in a panel: its text, then every verdict's fields."""
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table as RichTable

    console = console or Console(stderr=False, soft_wrap=False)
    own = [c for c in frame.columns if "." not in c and c not in ("table", "unit", "key", "kept", "drop_reason")]
    for row in frame.to_dict("records"):
        body = RichTable.grid(padding=(0, 1))
        body.add_column(style="bold")
        body.add_column()
        for col in own:
            text = plain(row.get(col))
            if text:
                body.add_row(col, text)
        verdicts = RichTable(show_header=True, header_style="dim", box=None, padding=(0, 1))
        verdicts.add_column("check")
        verdicts.add_column("field")
        verdicts.add_column("value", overflow="fold")
        for col in verdict_columns(frame):
            text = plain(row.get(col))
            if text:
                check, field = col.split(".", 1)
                verdicts.add_row(check, field, text)
        status = "[green]kept[/]" if row["kept"] else f"[red]dropped[/] ({row['drop_reason'] or 'no reason'})"
        console.print(Panel(Group(body, verdicts), title=f"{row['table']} {row['key']} · {status}", title_align="left"))


def markdown(frame: pd.DataFrame, title: str, estimate_text: str = "") -> str:
    """The preview as a Markdown document: one section per example, its verdicts as a table."""
    lines = [f"# {title}", ""]
    own = [c for c in frame.columns if "." not in c and c not in ("table", "unit", "key", "kept", "drop_reason")]
    for row in frame.to_dict("records"):
        status = "kept" if row["kept"] else f"dropped ({row['drop_reason'] or 'no reason'})"
        lines += [f"## {row['table']} {row['key']}: {status}", ""]
        lines += [f"- **{c}**: {_md(plain(row.get(c)))}" for c in own if plain(row.get(c))]
        cells = [(c.split(".", 1), plain(row.get(c))) for c in verdict_columns(frame) if plain(row.get(c))]
        if cells:
            lines += ["", "| check | field | value |", "|---|---|---|"]
            lines += [f"| {check} | {field} | {_md(value)} |" for (check, field), value in cells]
        lines.append("")
    if estimate_text:
        lines += ["## Estimate", "", "```", estimate_text, "```", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def comparison(left: dict[str, Any], right: dict[str, Any], names: tuple[str, str]) -> pd.DataFrame:
    """Two previews' figures side by side, one row per figure: yield per check, mean judge scores, examples kept,
    tokens per kept example. Each preview is {"frame", "estimate", "summary"}."""
    rows: dict[str, dict[str, Any]] = {}
    for side, preview in zip(names, (left, right)):
        est, frame = preview["estimate"], preview["frame"]
        for check, c in est["checks"].items():
            rows.setdefault(f"yield {check}", {})[side] = c["yield"]
        for col, mean in scores(frame).items():
            rows.setdefault(f"mean {col}", {})[side] = mean
        kept = int(frame["kept"].sum()) if len(frame) else 0
        rows.setdefault("examples", {})[side] = len(frame)
        rows.setdefault("examples kept", {})[side] = kept
        tokens = sum(
            u["prompt_tokens"] + u["completion_tokens"] for u in (preview["summary"].get("usage") or {}).values()
        )
        rows.setdefault("tokens per kept example", {})[side] = round(tokens / kept, 1) if kept else None
    return pd.DataFrame(list(rows.values()), index=list(rows), columns=list(names), dtype=object)


def side_by_side(left: pd.DataFrame, right: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    """The two previews' examples of each unit (seed, tool, leaf) next to each other, in order."""
    out = []
    text = [c for c in ("question", "query", "answer", "calls") if c in left.columns or c in right.columns]
    units = list(dict.fromkeys([*left.get("unit", []), *right.get("unit", [])]))
    for unit in units:
        a, b = (f[f["unit"] == unit].reset_index(drop=True) if len(f) else f for f in (left, right))
        for i in range(max(len(a), len(b))):
            row: dict[str, Any] = {"unit": unit}
            for side, f in zip(names, (a, b)):
                if i < len(f):
                    r = f.iloc[i]
                    for c in text:
                        row[f"{side}: {c}"] = plain(r.get(c))
                    row[f"{side}: verdict"] = "kept" if r["kept"] else f"dropped ({r['drop_reason']})"
            out.append(row)
    return pd.DataFrame(out)


def print_comparison(figures: pd.DataFrame, pairs: pd.DataFrame, console=None) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    console = console or Console()
    for title, frame in (("side by side", pairs), ("figures", figures)):
        table = RichTable(title=title, show_lines=title == "side by side")
        index = title == "figures"
        if index:
            table.add_column("")
        for col in frame.columns:
            table.add_column(str(col), overflow="fold")
        for idx, row in frame.iterrows():
            table.add_row(*([str(idx)] if index else []), *[plain(v) for v in row.tolist()])
        console.print(table)


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (its index first when it is named by text)."""
    index = not isinstance(frame.index, pd.RangeIndex)
    head = ([""] if index else []) + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        cells = ([str(idx)] if index else []) + [_md(plain(v)) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
