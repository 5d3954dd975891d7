"""The signatures table, and every example's match against it and against evaluation sets, as joins in the engine.

`signatures` holds one row per kept example of every run and job: each Q&A question and taxonomy pair of
`training_chat`, each tool query of `training_tools` (a conversation's first user turn is signed the same way: add
its table to the callers). A row holds the example's source (job, run, table, id, split), its normalised-text hash,
its content words and MinHash bands (duplicates.py), its word n-gram hashes and, when semantic dedup is on, its
embedding. It lives where `quality.dedup.signatures_table` says (default `signatures` in the run's schema), so one
table serves several schemas and jobs. A run appends only the examples the table does not hold yet, so an example
keeps the split it was first given.

Matching: shared MinHash bands give candidates, verified by the exact Jaccard of content words (negated alike), and
shared n-gram hashes are counted, both as joins in the engine: nothing of the table is collected to the driver, so
the driver's memory stays flat as the table grows (grouping a run's own near duplicates into one split collects their
matched pairs only, as dedup does).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakesynth.core import llm_stage, tables
from lakesynth.core.runtime import Runtime
from lakesynth.core.tables import S
from lakesynth.quality import duplicates
from lakesynth.quality.normalize import normalized_text

A = tables.T.ArrayType
BIGINTS, WORDS, VECTOR = A(tables.L), A(S), A(tables.T.FloatType())

TABLE = tables.contract(
    "signatures",
    [
        ("signature_id", S),  # the example's table and id, hashed: the same example is one row
        ("job", S),
        ("source_table", S),  # the example's table, fully named
        ("example_id", S),
        ("split", S),
        ("block", S),  # its topic, leaf or function: what semantic matches are compared within
        ("text", S),
        ("text_hash", S),
        ("words", WORDS),
        ("negations", S),
        ("bands", BIGINTS),
        ("ngram", tables.INT),
        ("ngrams", BIGINTS),
        ("embedding", VECTOR),
    ],
    key="signature_id",
    parent="example_id",
)
SIGNED = "id string, words array<string>, negations string, bands array<bigint>"


def place(rt: Runtime, signatures_table: str) -> Runtime:
    """The runtime whose schema holds the signatures table: the run's own, or that of `quality.dedup.signatures_table`
    (catalog.schema.table, checked when the config is read)."""
    if not signatures_table:
        return rt
    catalog, schema, _ = signatures_table.split(".")
    return dataclasses.replace(rt, catalog=catalog, schema=schema)


def contract(signatures_table: str) -> tables.Table:
    """The signatures table's contract under its configured name."""
    name = signatures_table.split(".")[-1] if signatures_table else TABLE.name
    return dataclasses.replace(TABLE, name=name)


def read(ctx, dedup) -> DataFrame:
    """Every signature, of every run and job that writes to the configured table."""
    return tables.read(ctx.spark, place(ctx.rt, dedup.signatures_table), contract(dedup.signatures_table))


def signature_id(table_fqn: str, id: Column | str) -> Column:
    return F.sha2(F.concat_ws("|", F.lit(table_fqn), F.col(id) if isinstance(id, str) else id), 256).substr(1, 32)


def _words(text: str) -> Column:
    return F.filter(F.split(F.lower(F.col(text)), r"[^\p{L}\p{N}]+"), lambda w: w != "")


def ngram_hashes(text: str, n: int) -> Column:
    """The hashes of a text's word n-grams (lower case, letters and digits): a text shorter than `n` words is one
    n-gram of them all, so a short evaluation item is matched when an example repeats it whole."""
    grams = F.expr(
        f"transform(sequence(0, greatest(size(_ngram_words) - {n}, 0)), "
        f"i -> xxhash64(concat_ws(' ', slice(_ngram_words, i + 1, {n}))))"
    )
    return F.when(F.size("_ngram_words") > 0, grams).otherwise(F.array().cast(BIGINTS))


def _minhash(batches: Iterator[pd.DataFrame], *, num_perm: int, bands: int) -> Iterator[pd.DataFrame]:
    with np.errstate(over="ignore"):
        for batch in batches:
            words = [duplicates.content_words(t) for t in batch["text"]]
            yield pd.DataFrame(
                {
                    "id": batch["id"],
                    "words": words,
                    "negations": [duplicates.negations(w) for w in words],
                    "bands": duplicates.band_hashes(words, num_perm, bands),
                }
            )


def sign(rows: DataFrame, near, n: int) -> DataFrame:
    """`rows` (an `id` and a `text` column, any others kept) with text_hash, words, negations, bands (MinHash of the
    content words, as `near`, a NearDedup, says), ngram and ngrams (hashes of word `n`-grams)."""
    minhashed = rows.select("id", "text").mapInPandas(
        functools.partial(_minhash, num_perm=near.num_perm, bands=near.bands), SIGNED
    )
    with_grams = rows.withColumn("_ngram_words", _words("text")).withColumn("ngrams", ngram_hashes("text", n))
    return (
        with_grams.drop("_ngram_words")
        .withColumn("text_hash", F.sha2(normalized_text("text"), 256).substr(1, 32))
        .withColumn("ngram", F.lit(n))
        .join(minhashed, "id")
    )


def near_matches(new: DataFrame, old: DataFrame, threshold: float) -> DataFrame:
    """One row per pair (new `id`, old `id`) whose content words are at least `threshold` alike and negated alike:
    `new_id`, `old_id`, `similarity`. Candidates share a MinHash band (a join on band and key), then the exact Jaccard
    is computed in the engine."""
    keys_new = new.select(F.col("id").alias("new_id"), F.posexplode("bands").alias("band", "key"))
    keys_old = old.select(F.col("id").alias("old_id"), F.posexplode("bands").alias("band", "key"))
    candidates = keys_new.join(keys_old, ["band", "key"]).select("new_id", "old_id").distinct()
    n = new.select(F.col("id").alias("new_id"), F.col("words").alias("w_n"), F.col("negations").alias("neg_n"))
    o = old.select(F.col("id").alias("old_id"), F.col("words").alias("w_o"), F.col("negations").alias("neg_o"))
    both = candidates.join(n, "new_id").join(o, "old_id").where(F.col("neg_n") == F.col("neg_o"))
    similarity = F.size(F.array_intersect("w_n", "w_o")) / F.size(F.array_union("w_n", "w_o"))
    matched = both.select("new_id", "old_id", similarity.alias("similarity")).where(F.col("similarity") >= threshold)
    return matched


def ngram_matches(new: DataFrame, old: DataFrame) -> DataFrame:
    """One row per pair (new `id`, old `id`) sharing at least one n-gram hash: `new_id`, `old_id`, `shared`."""
    grams_new = new.select(F.col("id").alias("new_id"), F.explode(F.array_distinct("ngrams")).alias("gram"))
    grams_old = old.select(F.col("id").alias("old_id"), F.explode(F.array_distinct("ngrams")).alias("gram"))
    return grams_new.join(grams_old, "gram").groupBy("new_id", "old_id").agg(F.count(F.lit(1)).alias("shared"))


def exact_matches(new: DataFrame, old: DataFrame) -> DataFrame:
    """One row per pair (new `id`, old `id`) with the same normalised text: `new_id`, `old_id`, `similarity` 1."""
    n = new.select(F.col("id").alias("new_id"), "text_hash")
    o = old.select(F.col("id").alias("old_id"), "text_hash")
    return n.join(o, "text_hash").select("new_id", "old_id", F.lit(1.0).alias("similarity"))


def embedded(ctx, rows: DataFrame, name: str) -> DataFrame:
    """`rows` (`id`, `block`, `text`) as `id` and `embedding`, the unit vector of the text from the semantic check's
    endpoint (`quality.dedup.semantic.endpoint`), staged."""
    endpoint = ctx.cfg.endpoint(ctx.cfg.quality.dedup.semantic.endpoint)
    vectors = llm_stage.embed(ctx, rows, teacher=endpoint, batch=endpoint.batch_size, name=name)
    # Staged again: the engine cannot resolve the reply's nested fields once this plan is joined to another.
    return tables.materialize(
        ctx.spark, ctx.rt, f"{name}_unit", vectors.select("id", F.col("vector").alias("embedding"))
    )


def semantic_matches(new: DataFrame, old: DataFrame, semantic) -> DataFrame:
    """One row per pair (new `id`, old `id`) whose embeddings' cosine is at least `semantic.threshold` (a
    SemanticDedup), compared within each `block` (or across all, with `block_by` "none"): `new_id`, `old_id`,
    `similarity`. A join in the engine, as large as the pairs of each block."""
    n = new.where(F.col("embedding").isNotNull()).select(
        F.col("id").alias("new_id"), "block", F.col("embedding").alias("a")
    )
    o = old.where(F.col("embedding").isNotNull()).select(
        F.col("id").alias("old_id"), "block", F.col("embedding").alias("b")
    )
    pairs = n.join(o, "block") if semantic.block_by != "none" else n.drop("block").crossJoin(o.drop("block"))
    cosine = F.aggregate(
        F.sequence(F.lit(1), F.size("a")),
        F.lit(0.0).cast("double"),
        lambda acc, i: acc + F.element_at("a", i) * F.element_at("b", i),
    )
    found = pairs.select("new_id", "old_id", cosine.alias("similarity"))
    return found.where(F.col("similarity") >= semantic.threshold)


def best(matches: DataFrame, *order: Column) -> DataFrame:
    """Of each new id's matches, the first by `order`, then the lowest old id."""
    rank = F.row_number().over(Window.partitionBy("new_id").orderBy(*order, "old_id"))
    return matches.withColumn("_rank", rank).where("_rank = 1").drop("_rank")


def _differ(pairs: DataFrame, left: DataFrame, right: DataFrame) -> int:
    """How many of `pairs` (`new_id`, `old_id`) have their two sides in different splits (`left` by new_id,
    `right` by old_id, each with `split`)."""
    both = pairs.join(left.toDF("new_id", "a"), "new_id").join(right.toDF("old_id", "b"), "old_id")
    return both.where(F.col("a") != F.col("b")).count()


def split_apart(ctx, valid: DataFrame, *, examples: str, block: str, text: str) -> tuple[DataFrame, DataFrame, dict]:
    """`valid` (`example_id`, `text`, `block` and its drawn `split`) with the split of each group of duplicates made
    one (near: `quality.dedup.split_threshold`; semantic, when on: its threshold). An example signed before keeps its
    split; a group that holds one, or matches an earlier run's signed example, takes the first such split; any other
    group takes the split drawn for its lowest id. Returns `valid` with the final split, its signed rows (for
    `record`), staged, and the leakage before and after: matched pairs whose sides are in different splits."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    dedup = cfg.quality.dedup
    rows = valid.select(
        F.col("example_id").alias("key"), F.col(text).alias("text"), "split", F.col(block).alias("block")
    )
    new = sign(rows.withColumn("id", signature_id(rt.fqn(examples), "key")), dedup.near, cfg.decontamination.ngram)
    if dedup.semantic.enabled and rows.limit(1).collect():  # and the embeddings, which later runs compare
        new = new.join(embedded(ctx, new.select("id", "block", "text"), f"{examples}_embeddings"), "id", "left")
    else:
        new = new.withColumn("embedding", F.lit(None).cast(VECTOR))
    new = tables.materialize(spark, rt, f"{examples}_signed", new)
    signed = read(ctx, dedup)
    columns = ("text_hash", "words", "negations", "bands", "split", "block", "embedding")
    old = signed.select(F.col("signature_id").alias("id"), *columns)

    def matched(a: DataFrame, b: DataFrame) -> DataFrame:
        found = exact_matches(a, b).unionByName(near_matches(a, b, dedup.split_threshold))
        if dedup.semantic.enabled:
            found = found.unionByName(semantic_matches(a, b, dedup.semantic))
        return found.select("new_id", "old_id").distinct()

    earlier = matched(new, old).where(F.col("new_id") != F.col("old_id"))
    earlier = earlier.join(old.select(F.col("id").alias("old_id"), F.col("split").alias("earlier_split")), "old_id")
    fixed = best(earlier, F.lit(0)).select(F.col("new_id").alias("id"), "earlier_split")
    own = old.select("id", F.col("split").alias("own_split"))
    inside = matched(new, new).where(F.col("new_id") < F.col("old_id"))
    # Union-find over the matched pairs alone: the driver holds only the duplicates (as dedup does).
    grouped = duplicates.groups([(r.new_id, r.old_id, 1.0) for r in inside.collect()], "split", "id")
    groups = spark.createDataFrame(grouped[["id", "split_group"]], "id string, split_group string")
    whole = Window.partitionBy("group").orderBy("key").rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    steady = F.coalesce("own_split", "earlier_split")
    final = (
        new.join(own, "id", "left")
        .join(fixed, "id", "left")
        .join(groups, "id", "left")
        .withColumn("group", F.coalesce("split_group", "id"))
        .withColumn("drawn", F.col("split"))
        .withColumn(
            "split",
            F.coalesce("own_split", F.first(steady, ignorenulls=True).over(whole), F.first("drawn").over(whole)),
        )
    )
    final = tables.materialize(spark, rt, f"{examples}_split", final.drop("own_split", "earlier_split", "split_group"))
    drawn, split = final.select("id", "drawn"), final.select("id", "split")
    earlier_split = old.select("id", "split")
    leakage = {
        "leakage_before": _differ(inside, drawn, drawn) + _differ(earlier, drawn, earlier_split),
        "leakage_after": _differ(inside, split, split) + _differ(earlier, split, earlier_split),
    }
    out = valid.drop("split").join(final.select(F.col("key").alias("example_id"), "split"), "example_id")
    return out, final, leakage


def record(ctx, final: DataFrame, *, examples: str, job: str, kept: DataFrame) -> int:
    """Append to the signatures table the examples of `final` (split_apart's rows) that are in `kept` (the example
    table as written: `example_id`) and that it does not hold yet; returns how many."""
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    dedup = cfg.quality.dedup
    where, table = place(rt, dedup.signatures_table), contract(dedup.signatures_table)
    held = read(ctx, dedup).select(F.col("signature_id").alias("id"))
    rows = final.join(kept.select(F.col("example_id").alias("key")).distinct(), "key", "left_semi")
    rows = rows.join(held, "id", "left_anti").select(
        F.col("id").alias("signature_id"),
        F.lit(job).alias("job"),
        F.lit(rt.fqn(examples)).alias("source_table"),
        F.col("key").alias("example_id"),
        "split",
        "block",
        "text",
        "text_hash",
        "words",
        "negations",
        "bands",
        "ngram",
        "ngrams",
        "embedding",
    )
    rows = tables.materialize(spark, rt, f"{examples}_new_signatures", rows)
    added = rows.count()
    if added:
        tables.upsert(spark, where, table, rows, run_id=cfg.run_id)
    return added
