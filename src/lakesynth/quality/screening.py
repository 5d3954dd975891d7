"""Screening examples against the whole lakehouse, for the screen stages (quality/screen.py, tools/call_screen.py):
each source's rows matched against earlier runs' signatures (signatures.py) and against evaluation sets, as joins in
the engine, into a verdict table per source and a report of the evaluation items hit."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from lakesynth.core import tables
from lakesynth.core.stage import StageResult
from lakesynth.core.tables import S
from lakesynth.errors import ConfigError
from lakesynth.quality.signatures import (
    WORDS,
    best,
    embedded,
    exact_matches,
    near_matches,
    ngram_matches,
    read,
    semantic_matches,
    sign,
    signature_id,
)

# A screen verdict's own columns (screen.py, call_screen.py): the earlier example matched, the evaluation item matched.
VERDICT_COLUMNS = [
    ("text", S),
    ("earlier_id", S),
    ("earlier_run", S),
    ("earlier_table", S),
    ("earlier_similarity", tables.D),
    ("earlier_match", S),  # exact, near or semantic
    ("contaminated_set", S),
    ("contaminated_item", S),
    ("contamination_ngrams", tables.L),
    ("contamination_similarity", tables.D),
    ("reasoning", S),
]
REPORT = tables.contract(
    "contamination_report",
    [("set", S), ("item_id", S), ("item_text", S), ("hits", tables.L), ("examples", WORDS)],
    key="item_id",
    parent="set",
)


@dataclasses.dataclass(frozen=True)
class Source:
    """A table whose rows become examples, as a screen reads it: its `key` and `text` columns, the column its
    semantic matches are blocked by, and the example table (`training_chat`, `training_tools`) its rows go to."""

    table: str
    key: str
    text: str
    block: str
    examples: str
    verdicts: tables.Table
    answered: bool = True  # only a row with an answer becomes an example (a tool pair's `answer` is optional)


def evaluation_items(ctx, sets) -> DataFrame:
    """The items of every evaluation set (`decontamination.sets`): `set`, `item_id`, `text`. A missing file, table or
    column, or an item with no text, stops the run naming it."""
    spark, frames = ctx.spark, []
    for i, entry in enumerate(sets):
        where = f"decontamination.sets[{i}] ({entry.path})"
        if not entry.path.startswith("table:") and "://" not in entry.path and not Path(entry.path).exists():
            raise ConfigError(f"{where}: cannot read it: no such file")  # the engine reads a missing file as empty
        try:
            if entry.path.startswith("table:"):
                frame = spark.table(entry.path.removeprefix("table:"))
            elif entry.path.endswith((".jsonl", ".json")):
                frame = spark.read.json(entry.path)
            elif entry.path.endswith(".parquet"):
                frame = spark.read.parquet(entry.path)
            else:
                raise ConfigError(f"{where}: expected a .jsonl, .json or .parquet file or table:<catalog.schema.table>")
            columns = frame.columns
        except ConfigError:
            raise
        except Exception as exc:  # the engine's own error for a missing file or table
            raise ConfigError(f"{where}: cannot read it: {str(exc).splitlines()[0]}") from exc
        for column in (entry.text, entry.id):
            if column and column not in columns:
                raise ConfigError(f"{where}: no column '{column}' (columns: {', '.join(columns)})")
        number = F.row_number().over(Window.orderBy(F.monotonically_increasing_id())).cast(S)
        item_id = F.col(entry.id).cast(S) if entry.id else number
        items = frame.select(item_id.alias("item_id"), F.col(entry.text).cast(S).alias("text"))
        empty = items.where(F.col("text").isNull() | (F.trim("text") == "")).limit(1).collect()
        if empty:
            raise ConfigError(f"{where}: item {empty[0].item_id}: column '{entry.text}' is empty")
        frames.append(items.select(F.lit(entry.name).alias("set"), "item_id", "text"))
    return functools.reduce(DataFrame.unionByName, frames)


def signed_items(ctx, name: str) -> DataFrame | None:
    """The evaluation items of `decontamination.sets`, signed and staged once per stage (None without sets)."""
    dedup, dec = ctx.cfg.quality.dedup, ctx.cfg.decontamination
    if not dec.sets:
        return None
    items = evaluation_items(ctx, dec.sets)
    items = items.withColumn("id", F.sha2(F.concat_ws("|", "set", "item_id"), 256).substr(1, 32))
    return tables.materialize(ctx.spark, ctx.rt, f"{name}_evaluation_items", sign(items, dedup.near, dec.ngram))


def screened(
    ctx, rows: DataFrame, items: DataFrame | None, *, examples: str, name: str
) -> tuple[DataFrame, DataFrame | None]:
    """`rows` (`key`, `text`, `block`) checked against the earlier runs' signatures (with
    `quality.dedup.across_runs`) and the evaluation sets (`decontamination.sets`): one verdict row per row
    (`key`, VERDICT_COLUMNS, keep, drop_reason); earlier examples match exactly, nearly, or (with semantic dedup on)
    by their embeddings within a block, and the evaluation items (`signed_items`) hit (`set`, `item_id`,
    `item_text`, `key`), or None without sets. A row's own signature (the same example signed by an earlier
    invocation) never matches it."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    dedup, dec = cfg.quality.dedup, cfg.decontamination
    example_fqn = rt.fqn(examples)
    new = sign(rows.withColumn("id", signature_id(example_fqn, "key")), dedup.near, dec.ngram)
    new = tables.materialize(spark, rt, f"{name}_signed", new)
    verdicts = new.select("id", "key", "text")
    reasons = []
    if dedup.across_runs:
        earlier = read(ctx, dedup).where(F.col("run_id") != F.lit(cfg.run_id))
        old = earlier.select(
            F.col("signature_id").alias("id"), "text_hash", "words", "negations", "bands", "block", "embedding"
        )
        matches = exact_matches(new, old).withColumn("match", F.lit("exact"))
        matches = matches.unionByName(near_matches(new, old, dedup.near.threshold).withColumn("match", F.lit("near")))
        if dedup.semantic.enabled and new.limit(1).collect():  # nothing to embed: no call, no empty staging
            vectors = new.join(embedded(ctx, new.select("id", "block", "text"), f"{name}_embeddings"), "id")
            semantic = semantic_matches(vectors, old, dedup.semantic).withColumn("match", F.lit("semantic"))
            matches = matches.unionByName(semantic)
        kind = F.when(F.col("match") == "exact", 0).when(F.col("match") == "near", 1).otherwise(2)  # the surest first
        matches = best(matches.where(F.col("new_id") != F.col("old_id")), kind, F.col("similarity").desc())
        about = earlier.select(
            F.col("signature_id").alias("old_id"),
            F.col("example_id").alias("earlier_id"),
            F.col("run_id").alias("earlier_run"),
            F.col("source_table").alias("earlier_table"),
        )
        found = matches.join(about, "old_id").select(
            F.col("new_id").alias("id"),
            "earlier_id",
            "earlier_run",
            "earlier_table",
            F.col("similarity").alias("earlier_similarity"),
            F.col("match").alias("earlier_match"),
        )
        verdicts = verdicts.join(found, "id", "left")
        reasons.append(F.when(F.col("earlier_id").isNotNull(), F.lit("dedup:earlier_run")))
    else:
        verdicts = verdicts.select("*", *[F.lit(None).alias(c) for c in ("earlier_id", "earlier_run", "earlier_table")])
        verdicts = verdicts.withColumn("earlier_similarity", F.lit(None).cast("double"))
        verdicts = verdicts.withColumn("earlier_match", F.lit(None).cast(S))
    hits = None
    if items is not None:
        by_ngram = ngram_matches(new, items).withColumn("similarity", F.lit(None).cast("double"))
        by_near = near_matches(new, items, dec.threshold).withColumn("shared", F.lit(None).cast("long"))
        found = by_ngram.unionByName(by_near)
        hits = found.join(
            items.select(F.col("id").alias("old_id"), "set", "item_id", F.col("text").alias("item_text")), "old_id"
        )
        hits = hits.join(new.select(F.col("id").alias("new_id"), "key"), "new_id")
        first = best(hits, F.col("shared").desc_nulls_last(), F.col("similarity").desc())
        verdicts = verdicts.join(
            first.select(
                F.col("new_id").alias("id"),
                F.col("set").alias("contaminated_set"),
                F.col("item_id").alias("contaminated_item"),
                F.col("shared").alias("contamination_ngrams"),
                F.col("similarity").alias("contamination_similarity"),
            ),
            "id",
            "left",
        )
        reasons.insert(
            0, F.when(F.col("contaminated_set").isNotNull(), F.concat(F.lit("contaminated:"), "contaminated_set"))
        )
        hits = hits.select("set", "item_id", "item_text", "key").distinct()
    else:
        for column, kind in (("contaminated_set", S), ("contaminated_item", S), ("contamination_ngrams", tables.L),
                             ("contamination_similarity", tables.D)):  # fmt: skip
            verdicts = verdicts.withColumn(column, F.lit(None).cast(kind))
    drop_reason = F.coalesce(*reasons, F.lit(None).cast(S))
    shared = F.concat(F.lit(f" ({dec.ngram}-grams shared: "), F.col("contamination_ngrams").cast(S), F.lit(")"))
    alike = F.concat(F.lit(" (Jaccard "), F.format_number("contamination_similarity", 2), F.lit(")"))
    item = F.concat(
        F.lit("matches item "),
        "contaminated_item",
        F.lit(" of evaluation set "),
        "contaminated_set",
        F.when(F.col("contamination_ngrams").isNotNull(), shared).otherwise(alike),
    )
    repeat = F.concat(
        F.lit("repeats example "),
        "earlier_id",
        F.lit(" of run "),
        "earlier_run",
        F.lit(" ("),
        "earlier_match",
        F.lit(", similarity "),
        F.format_number("earlier_similarity", 2),
        F.lit(")"),
    )
    reasoning = F.concat_ws(
        "; ",
        F.when(F.col("contaminated_set").isNotNull(), item),
        F.when(F.col("earlier_id").isNotNull(), repeat),
    )
    out = verdicts.select(
        "key",
        *[c for c, _ in VERDICT_COLUMNS if c != "reasoning"],
        reasoning.alias("reasoning"),
        drop_reason.isNull().alias("keep"),
        drop_reason.alias("drop_reason"),
    )
    return out, hits


def report(hits: DataFrame) -> DataFrame:
    """One row per evaluation item hit: its set, id and text, how many examples hit it, and which."""
    grouped = hits.groupBy("set", "item_id", "item_text")
    return grouped.agg(F.count(F.lit(1)).alias("hits"), F.sort_array(F.collect_set("key")).alias("examples"))


def screen(ctx, sources: tuple[Source, ...], report_table: tables.Table):
    """A screen stage's work: each source's rows screened (`screened`) into its verdict table, and the evaluation
    items hit into `report_table`. With nothing to check, the verdict tables are emptied (no row drops nothing)."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    checking = cfg.quality.dedup.across_runs or bool(cfg.decontamination.sets)
    items = signed_items(ctx, report_table.name)  # a bad set stops the stage here, before anything is written
    result, all_hits = StageResult(tables=[*(s.verdicts for s in sources), report_table]), None
    for source in sources:
        rows = ctx.read(source.table, kept=False)
        if source.answered:  # only an answered pair becomes an example
            rows = rows.where(F.col("answer").isNotNull())
        if "error" in rows.columns:
            rows = rows.where(F.col("error").isNull())
        rows = rows.select(
            F.col(source.key).alias("key"), F.col(source.text).cast(S).alias("text"), F.col(source.block).alias("block")
        )
        if not checking:
            rows = rows.limit(0)
        out, hits = screened(ctx, rows, items, examples=source.examples, name=source.verdicts.name)
        out = out.withColumnRenamed("key", source.key)
        tables.overwrite(spark, rt, source.verdicts, out.select(source.verdicts.row_names), run_id=cfg.run_id)
        written = tables.read(spark, rt, source.verdicts)
        counts = tables.verdict_counts(written)
        result.rows_in += written.count()
        result.rows_out += counts["kept"]
        dropped = result.metrics.setdefault("dropped", {})
        for reason, n in counts["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
        if hits is not None:
            all_hits = hits if all_hits is None else all_hits.unionByName(hits)
    if all_hits is None:
        all_hits = spark.createDataFrame([], "set string, item_id string, item_text string, key string")
    tables.overwrite(spark, rt, report_table, report(all_hits), run_id=cfg.run_id)
    if items is not None:
        hit = tables.read(spark, rt, report_table).groupBy("set").agg(F.count(F.lit(1)).alias("hit"))
        per_set = items.groupBy("set").count().join(hit, "set", "left").collect()  # one row per evaluation set
        result.metrics["contamination"] = {r.set: {"items": r["count"], "items_hit": r.hit or 0} for r in per_set}
    return result
