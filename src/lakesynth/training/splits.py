"""Training examples split into train, val and test: drawn from a seeded hash of the question, or exactly per stratum.

Adding or removing data never moves an example (except the one case `fill_empty_splits` names), and a question
repeated is in one split only.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from lakesynth.quality.normalize import normalized_text

# The text an example is split by (not a column of the table): its question.
SPLIT_TEXT = "split_text"
DRAW = "_split_draw"  # the example's draw in [0, 1) that decides its split


def assign_split(chat: DataFrame, *, by: str, val_fraction: float, test_fraction: float, seed: int) -> DataFrame:
    """Adds `split`, drawn per example from a seeded hash of its normalised text `by` (quality.normalize):
    adding or removing data never moves an example, the same question (normalised) is in one split only, and
    each topic gets its share of every split in expectation."""
    digest = F.sha2(F.concat_ws("|", F.lit(str(seed)), normalized_text(by)), 256)
    draw = F.conv(F.substring(digest, 1, 8), 16, 10).cast("double") / float(16**8)  # uniform in [0, 1)
    # No otherwise(): an all-literal CASE is NOT NULL on classic Spark but nullable on Sail (parity suite).
    split = (
        F.when(F.col(DRAW) < val_fraction, "val")
        .when(F.col(DRAW) < val_fraction + test_fraction, "test")
        .when(F.col("example_id").isNotNull(), "train")
    )
    return chat.withColumn(DRAW, draw).withColumn("split", split)


def stratified_split(
    chat: DataFrame, *, by: str, strata: list[str], val_fraction: float, test_fraction: float, seed: int
) -> DataFrame:
    """Adds `split` with exact shares per stratum (the values of the `strata` columns), counted in distinct
    questions (normalised `by`), so a question repeated is in one split only: the whole split gets
    round(n x fraction) of them, shared among the strata by largest remainder, so each stratum is within one of its
    share (of val, and of val and test together). Within a stratum the questions are taken in the order of the
    seeded hash of `by` (as `assign_split` draws), so a rerun on the same data gives the same split; adding data to
    a stratum can move a question at its boundary, never one of another stratum."""
    drawn = assign_split(chat, by=by, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed).drop("split")
    texts = drawn.select(*strata, DRAW).distinct()
    sizes = {tuple(r[c] for c in strata): r["count"] for r in texts.groupBy(*strata).count().collect()}
    total = sum(sizes.values())
    quotas = {k: [0, 0] for k in sizes}
    for i, fraction in enumerate((val_fraction, val_fraction + test_fraction)):  # cumulative: val, then val+test
        exact = {k: n * fraction for k, n in sizes.items()}
        floors = {k: int(v) for k, v in exact.items()}
        short = round(total * fraction) - sum(floors.values())
        for k in sorted(exact, key=lambda k: (floors[k] - exact[k], str(k)))[: max(0, short)]:
            floors[k] += 1
        for k in sizes:
            quotas[k][i] = floors[k]
    bounds = drawn.sparkSession.createDataFrame(
        [[*k, v, t] for k, (v, t) in quotas.items()],
        ", ".join([*(f"`{c}` {drawn.schema[c].dataType.simpleString()}" for c in strata), "_val int", "_val_test int"]),
    )
    rank = F.row_number().over(Window.partitionBy(*strata).orderBy(DRAW))
    ranked = texts.join(bounds, strata, "left").withColumn("_rank", rank)
    split = F.when(F.col("_rank") <= F.col("_val"), "val").when(F.col("_rank") <= F.col("_val_test"), "test")
    chosen = ranked.select(*strata, DRAW, split.when(F.col("_rank").isNotNull(), "train").alias("split"))
    return drawn.join(chosen, [*strata, DRAW], "left")


def fill_empty_splits(split: DataFrame, *, val_fraction: float, test_fraction: float) -> DataFrame:
    """A split that should get examples but drew none (a small dataset) takes the training question drawn
    nearest to it, with every example of that question, so a fine-tune always has a validation set. This
    is the one case in which an example can move: once the split draws examples of its own, it goes back."""
    counts = {r.split: r["count"] for r in split.groupBy("split").count().collect()}
    for name, share in (("val", val_fraction), ("test", test_fraction)):
        if share and not counts.get(name) and counts.get("train", 0) >= 2:
            nearest = split.where(F.col("split") == "train").agg(F.min(DRAW)).first()[0]
            split = split.withColumn("split", F.when(F.col(DRAW) == nearest, name).otherwise(F.col("split")))
            counts = {r.split: r["count"] for r in split.groupBy("split").count().collect()}
    return split
