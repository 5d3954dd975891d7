"""The Q&A dataset's report figures: topics before/after, lengths, error rates per stage, split balance.

Every figure is drawn from small Spark aggregates (per topic, per length bucket), never from the
rows themselves, so the report costs the same for 1k and 1M examples. Used by the report notebook
and logged to MLflow at the end of each run, as the figures of the format stage (`Stage.figures`).
"""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from lakesynth.core.runtime import Runtime

BUCKET = 40  # characters per bar of the length histograms
# The Q&A job's tables, from seeds to training examples, and its LLM stages' tables.
FLOW = ("seed_questions", "synthetic_questions", "synthetic_responses", "training_chat")
LLM_TABLES = {"questions": "synthetic_questions", "responses": "synthetic_responses"}


def _table(spark: SparkSession, rt: Runtime, name: str):
    return spark.table(rt.fqn(name))


def _counts(df, col: str) -> dict:
    return {r[col]: r["count"] for r in df.groupBy(col).count().collect()}


def topic_counts(spark: SparkSession, rt: Runtime) -> dict[str, dict[str, int]]:
    """Rows per topic in each table, from seeds to training examples."""
    return {name: _counts(_table(spark, rt, name), "topic") for name in FLOW}


def error_rates(spark: SparkSession, rt: Runtime) -> dict[str, float]:
    """Share of rows with an error, per LLM stage."""
    rates = {}
    for stage, table in LLM_TABLES.items():
        row = _table(spark, rt, table).agg(F.count(F.lit(1)).alias("n"), F.count("error").alias("errors")).collect()[0]
        rates[stage] = row.errors / row.n if row.n else 0.0
    return rates


def length_histograms(spark: SparkSession, rt: Runtime) -> dict[str, dict[int, int]]:
    """Question and answer lengths (characters), bucketed by BUCKET."""
    responses = _table(spark, rt, "synthetic_responses").where("error IS NULL")
    out = {}
    for col in ("question", "answer"):
        buckets = responses.select((F.floor(F.length(col) / BUCKET) * BUCKET).cast("int").alias("bucket"))
        out[col] = dict(sorted(_counts(buckets, "bucket").items()))
    return out


def split_balance(spark: SparkSession, rt: Runtime) -> dict[str, dict[str, int]]:
    chat = _table(spark, rt, "training_chat")
    balance: dict[str, dict[str, int]] = {}
    for r in chat.groupBy("topic", "split").count().collect():
        balance.setdefault(r.topic, {})[r.split] = r["count"]
    return balance


def dataset_figures(spark: SparkSession, rt: Runtime) -> dict:
    """name -> matplotlib Figure for the four views of the report."""
    import matplotlib.pyplot as plt  # headless machines get the Agg backend by default

    figures = {}
    topics = topic_counts(spark, rt)
    names = sorted(set().union(*[set(c) for c in topics.values()]) - {None})
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(topics)
    for i, (table, counts) in enumerate(topics.items()):
        ax.bar([x + i * width for x in range(len(names))], [counts.get(n, 0) for n in names], width, label=table)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=30, ha="right")
    ax.set_ylabel("rows")
    ax.set_title("Topic distribution, seeds to training examples")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    fig.tight_layout()
    figures["topics"] = fig

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (col, hist) in zip(axes, length_histograms(spark, rt).items()):
        ax.bar(list(hist), list(hist.values()), width=BUCKET * 0.9, align="edge")
        ax.set_title(f"{col} length (characters)")
        ax.set_ylabel("rows")
    fig.tight_layout()
    figures["lengths"] = fig

    fig, ax = plt.subplots(figsize=(5, 3.5))
    rates = error_rates(spark, rt)
    ax.bar(list(rates), [100 * r for r in rates.values()], color="tab:red")
    ax.set_ylabel("% rows with an error")
    ax.set_title("Error rate per stage")
    if not any(rates.values()):  # say so, rather than draw an empty axis from -0.04 to 0.04
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no errors", transform=ax.transAxes, ha="center", va="center", fontsize=12)
    fig.tight_layout()
    figures["errors"] = fig

    fig, ax = plt.subplots(figsize=(9, 4))
    balance = split_balance(spark, rt)
    topics_sorted = sorted(balance)
    bottom = [0] * len(topics_sorted)
    for split in ("train", "val", "test"):
        values = [balance[t].get(split, 0) for t in topics_sorted]
        if any(values):
            ax.bar(topics_sorted, values, bottom=bottom, label=split)
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title("Split balance per topic")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    fig.tight_layout()
    figures["splits"] = fig
    return figures


def leaf_counts(spark: SparkSession, rt: Runtime) -> dict[str, dict[str, int]]:
    """A taxonomy's kept pairs per leaf (answered, not dropped by the grounding check): `before`, those of the
    first round, and `after`, with every top-up round's; empty without a taxonomy."""
    if not spark.catalog.tableExists(rt.fqn("leaf_pairs")):
        return {}
    kept = _table(spark, rt, "leaf_pairs").where(F.col("error").isNull())
    if spark.catalog.tableExists(rt.fqn("grounding_verdicts")):
        dropped = _table(spark, rt, "grounding_verdicts").where("NOT keep OR keep IS NULL").select("pair_id")
        kept = kept.join(dropped, "pair_id", "left_anti")
    after = _counts(kept, "leaf")
    if not after:
        return {}
    before = _counts(kept.where(F.col("round") == 0), "leaf")
    return {"before": {leaf: before.get(leaf, 0) for leaf in sorted(after)}, "after": dict(sorted(after.items()))}
