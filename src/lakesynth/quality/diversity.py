"""How varied a run's examples are, per run and per topic, leaf or function: the figures the summary, the report
notebook and the dataset card show, so a dataset that repeats itself says so.

- distinct-n: distinct word n-grams over all n-grams of a group's texts (1 when no n-gram repeats; 1/k for k
  copies of one text);
- distinct texts: distinct normalised texts over texts (the same bounds);
- mean pairwise similarity (`quality.diversity.embeddings`): the mean cosine of the embeddings of every two of up
  to `sample` texts per group (1 for copies of one text; it costs embedding calls);
- coverage: of the topics, leaves or tools the run was asked for, how many have an example.
Everything is computed in the engine; the driver holds one row per group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import llm_stage, tables
from lakesynth.core.tables import INT, D, L, S
from lakesynth.quality.normalize import normalized_text

ALL = "(all)"  # the group of every example
COLUMNS = [("by", S), ("group", S), ("texts", L), ("distinct_texts", D), ("n", INT), ("distinct_n", D),
           ("mean_similarity", D), ("coverage", S)]  # fmt: skip


def table(name: str) -> tables.Table:
    """A diversity table's contract: one row per group of a format stage's examples, and one for all (ALL)."""
    return tables.contract(name, COLUMNS, key="group", parent="by")


class DiversityGate(Section):
    enabled: bool = Field(
        False,
        description="Send a topic whose kept questions are too alike back to top-up (qa topup): each of its seeds "
        "asks for questions.per_seed more, with a request for different angles, in each of quality.max_rounds rounds "
        "while the topic stays below min_distinct_n.",
    )
    min_distinct_n: float = Field(
        0.3,
        gt=0,
        le=1,
        description="A topic whose kept questions' distinct-n (per n above) is below this is too alike.",
    )


class DiversityConfig(Section):
    n: int = Field(2, ge=1, le=5, description="Words per n-gram of distinct-n.")
    embeddings: bool = Field(
        False, description="Also the mean pairwise cosine of the examples' embeddings, sampled (costs calls)."
    )
    sample: int = Field(200, ge=2, le=2000, description="Texts per group whose every pair is compared.")
    endpoint: str = Field("embeddings", description="The endpoint (a name under endpoints:) that embeds the texts.")
    gate: DiversityGate = Field(
        default_factory=DiversityGate, description="Send the topics whose questions are too alike back to top-up."
    )


def _grams(n: int) -> F.Column:
    words = F.filter(F.split(F.lower(F.col("text")), r"[^\p{L}\p{N}]+"), lambda w: w != "")
    grams = F.expr(f"transform(sequence(1, size(_w) - {n - 1}), i -> concat_ws(' ', slice(_w, i, {n})))")
    return F.when(F.size("_w") >= n, grams).otherwise(F.array().cast("array<string>")), words


def distinct(rows: DataFrame, n: int) -> DataFrame:
    """One row per `group` of `rows` (`group`, `text`): texts, distinct_texts (share), distinct_n (share)."""
    grams, words = _grams(n)
    exploded = rows.withColumn("_w", words).select("group", F.explode(grams).alias("gram"))
    by_gram = exploded.groupBy("group").agg((F.countDistinct("gram") / F.count("gram")).alias("distinct_n"))
    texts = (
        rows.withColumn("_norm", normalized_text("text"))
        .groupBy("group")
        .agg(F.count(F.lit(1)).alias("texts"), (F.countDistinct("_norm") / F.count(F.lit(1))).alias("distinct_texts"))
    )
    return texts.join(by_gram, "group", "left")


def per_group(rows: DataFrame, n: int) -> dict[str, float]:
    """group -> distinct-n of `rows` (`group`, `text`), for the groups that have an n-gram: the few rows a gate
    decides on."""
    return {r.group: r.distinct_n for r in distinct(rows, n).where("distinct_n IS NOT NULL").collect()}


def _mean_cosine(rows):  # no type hints: pyspark would try to infer a UDF type from them
    vectors = np.stack(rows["vector"].to_numpy()).astype(np.float32)
    k = len(vectors)
    pairs = (vectors @ vectors.T)[np.triu_indices(k, 1)]
    return pd.DataFrame({"group": [rows["group"].iloc[0]], "mean_similarity": [float(pairs.mean()) if k > 1 else None]})


def similarity(ctx, rows: DataFrame, cfg: DiversityConfig, name: str) -> DataFrame:
    """One row per `group`: the mean cosine of every two of up to `cfg.sample` of its texts' embeddings (taken in
    the order of a hash of the text, so a rerun samples the same)."""
    pick = F.row_number().over(Window.partitionBy("group").orderBy(F.xxhash64("text"), "text"))
    sampled = rows.withColumn("_pick", pick).where(F.col("_pick") <= cfg.sample).drop("_pick")
    endpoint = ctx.cfg.endpoint(cfg.endpoint)
    embedded = llm_stage.embed(ctx, sampled, teacher=endpoint, batch=endpoint.batch_size, name=f"{name}_diversity")
    return (
        embedded.select("group", "vector")
        .groupBy("group")
        .applyInPandas(_mean_cosine, "group string, mean_similarity double")
    )


def measured(ctx, examples: DataFrame, *, by: str, text: str, asked: DataFrame, name: str) -> DataFrame:
    """The diversity figures of `examples` (a `by` column and a `text` column) as rows of a diversity table: one for
    all of them (ALL, with the coverage of `asked`: one column, the values of `by` the run was asked for) and one per
    value of `by`."""
    cfg = ctx.cfg.quality.diversity
    rows = examples.select(
        F.coalesce(F.col(by).cast("string"), F.lit("none")).alias("group"), F.col(text).alias("text")
    )
    rows = rows.unionByName(rows.withColumn("group", F.lit(ALL)))
    found = distinct(rows, cfg.n).withColumn("n", F.lit(cfg.n))
    if cfg.embeddings:
        found = found.join(similarity(ctx, rows, cfg, name), "group", "left")
    else:
        found = found.withColumn("mean_similarity", F.lit(None).cast("double"))
    wanted = asked.select(F.col(asked.columns[0]).cast("string").alias("group")).distinct()
    covered = wanted.join(rows.select("group").distinct(), "group", "left_semi").agg(F.count(F.lit(1)).alias("c"))
    coverage = covered.crossJoin(wanted.agg(F.count(F.lit(1)).alias("w")))
    coverage = coverage.select(F.lit(ALL).alias("group"), F.concat_ws("/", "c", "w").alias("coverage"))
    return found.join(coverage, "group", "left").select(F.lit(by).alias("by"), *[c for c, _ in COLUMNS[1:]])


def figures(table: DataFrame) -> dict:
    """A diversity table's figures for the summary: those of ALL, then `per_<by>` (one row per group)."""
    per, by = {}, "group"
    for r in table.collect():
        by = r.by
        figure = {"texts": r.texts, "distinct_texts": round(r.distinct_texts, 4)}
        figure[f"distinct_{r.n}"] = None if r.distinct_n is None else round(r.distinct_n, 4)
        if r.mean_similarity is not None:
            figure["mean_similarity"] = round(r.mean_similarity, 4)
        if r.coverage is not None:
            figure[f"{by}_coverage"] = r.coverage
        per[r.group] = figure
    overall = per.pop(ALL, {"texts": 0})
    return {**overall, f"per_{by}": dict(sorted(per.items()))}
