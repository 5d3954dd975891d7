"""`lakesynth report`: the dataset report of a run as one self-contained HTML file, rendered headless (no kernel,
no notebook server): the warnings (what ended with none kept), the yield funnel (plot, steps, per topic, leaf, tool
and category, tokens and cost per 1,000 kept), each check's score histograms, a few dropped rows per reason, and
the Q&A job's dataset figures (topics, lengths, errors, splits) where its tables are there.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import pandas as pd

from lakesynth.core import funnel
from lakesynth.core.stage import Stage
from lakesynth.report import funnel as drawn
from lakesynth.report import show
from lakesynth.report.notebook import NotebookContext
from lakesynth.report.tracking import score_counts, score_figure

EXAMPLES = 3  # dropped rows shown per reason
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;text-align:left}.warn{background:#fff4e5;border-left:4px solid #f90;padding:.5em 1em}
img{max-width:100%}"""


def render(ctx: NotebookContext, stages: dict[str, Stage], out: Path, run_id: str = "") -> Path:
    """Write the report of the tables `ctx` reads to `out` (made whole, then renamed into place); returns it."""
    found = funnel.of_run(ctx, stages) if run_id else funnel.summary(ctx, stages)
    parts = [
        f"<h1>Dataset report</h1><p>{html.escape(ctx.where())}"
        + (f"; run <code>{html.escape(run_id)}</code>" if run_id else "")
        + "</p>"
    ]
    parts.append(_warnings(found))
    parts.append(_funnel(found) if found else "<p>No generated rows yet: run the job first.</p>")
    parts.append(_scores(ctx))
    parts.append(_dropped(ctx, stages))
    parts.append(_dataset(ctx))
    head = f"<head><meta charset='utf-8'><title>lakesynth report</title><style>{STYLE}</style></head>"
    page = f"<!doctype html><html>{head}<body>{''.join(parts)}</body></html>"
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.part")
    scratch.write_text(page, encoding="utf-8")
    scratch.replace(out)
    return out


def _warnings(found: dict[str, Any]) -> str:
    items = "".join(f"<li>{html.escape(w)}</li>" for w in found.get("warnings", []))
    return (
        f"<h2>Warnings</h2><div class='warn'><ul>{items}</ul></div>"
        if items
        else "<h2>Warnings</h2><p>None: every check, topic, leaf, tool and category kept examples.</p>"
    )


def _funnel(found: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    figure = drawn.figure(found)
    image = _png(figure)
    plt.close(figure)
    spend = found.get("spend", {})
    groups = []
    for group, values in found.get("by", {}).items():
        rows = [
            {
                group: v,
                "generated": g["generated"],
                "kept": g["kept"],
                **{f"dropped by {k}": n for k, n in g["dropped"].items()},
                **g["splits"],
            }
            for v, g in values.items()
        ]
        groups.append(f"<h3>Per {group}</h3>" + pd.DataFrame(rows).fillna(0).to_html(index=False))
    return (
        "<h2>Yield funnel</h2><p>Every generated row is kept (in a split) or counted once, under the first step "
        "that dropped it.</p>"
        f"{image}{pd.DataFrame(drawn.rows(found)).to_html(index=False)}"
        f"<p>Tokens: {spend.get('prompt_tokens', 0):,} prompt, {spend.get('completion_tokens', 0):,} completion"
        + (f"; {spend['tokens_per_1000_kept']:,} per 1,000 kept" if "tokens_per_1000_kept" in spend else "")
        + (
            f"; cost ${spend['cost_usd']} (${spend['cost_per_1000_kept_usd']} per 1,000 kept)"
            if "cost_per_1000_kept_usd" in spend
            else ""
        )
        + "</p>"
        + "".join(groups)
    )


def _scores(ctx: NotebookContext) -> str:
    import matplotlib.pyplot as plt

    parts = []
    for name, contract in sorted(ctx.contracts.items()):
        if contract.verdict_of and ctx.exists(name):
            counts = score_counts(ctx.read(name, kept=False))
            if counts:
                figure = score_figure(counts, f"{name}: rows per score")
                parts.append(_png(figure))
                plt.close(figure)
    return "<h2>Scores</h2>" + ("".join(parts) or "<p>No check with scores has run.</p>")


def _dropped(ctx: NotebookContext, stages: dict[str, Stage]) -> str:
    """A few dropped rows per reason of each verdict table that dropped any."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parts = []
    for name, contract in sorted(ctx.contracts.items()):
        if not contract.verdict_of or not ctx.exists(name):
            continue
        rows = show.frame(ctx, stages, name, dropped=True)
        first = Window.partitionBy("drop_reason").orderBy(contract.key)
        sample = rows.withColumn("_n", F.row_number().over(first)).where(f"_n <= {EXAMPLES}").drop("_n").toPandas()
        if sample.empty:
            continue
        keep = [c for c in sample.columns if c == contract.key or not show.hidden(c) and sample[c].notna().any()]
        keep.remove("keep")
        sample = sample[keep].sort_values("drop_reason").map(lambda v: show.cell(v) if isinstance(v, str) else v)
        parts.append(f"<h3>{html.escape(name)}</h3>" + sample.to_html(index=False))
    return "<h2>Dropped rows, a few per reason</h2>" + ("".join(parts) or "<p>Nothing dropped.</p>")


def _dataset(ctx: NotebookContext) -> str:
    """The Q&A job's figures (qa/insights.py), where its tables are there."""
    from lakesynth.qa import insights

    if not all(ctx.exists(t) for t in insights.FLOW):
        return ""
    import matplotlib.pyplot as plt

    figures = insights.dataset_figures(ctx.spark, ctx.rt)
    images = "".join(_png(f) for f in figures.values())
    plt.close("all")
    return f"<h2>Topics, lengths, errors and splits</h2>{images}"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
