"""Finding duplicate texts across a table, for the checks that drop them (dedup, call_verdicts).

- Near: Jaccard similarity of the texts' content words (lower case, no stop words, plural `s` dropped) at least
  `threshold`, found by MinHash + LSH bands on the executors (Sail has no pyspark.ml) and verified exactly. Negation
  words (no, not, n't, never, without, nor, none) are content words, and two texts whose negation words differ are
  never near duplicates: "with injuries" and "with no injuries" ask different things, however alike the rest.
- Semantic: cosine of the texts' embeddings (an OpenAI-compatible /embeddings endpoint) at least `threshold`,
  within blocks.
Both return matched pairs of ids; `groups` joins them into connected groups. Rows are named by `id` and `text`
columns (a question's `question_id` and `question` by default), so any table's texts can be compared.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from lakesynth.core import llm_stage, tables
from lakesynth.quality.normalize import normalized_text

STOP_WORDS = frozenset(
    "a an the and or but if then so to of in on at by for with from into onto about as is are was were be been "
    "being am do does did doing have has had having i me my mine we our you your he she it its they them their "
    "this that these those there here what which who whom whose when where why how can could would should will "
    "shall may might must please just also too very any some all each every one".split()
)
# They turn a question into another one, so they are never stop words, and a pair that differs in them never matches.
NEGATIONS = frozenset({"no", "not", "never", "without", "nor", "none", "nothing", "nobody", "neither", "nowhere"})
_CONTRACTED = {"can't": "can", "won't": "will", "shan't": "shall"}  # the rest are the verb and n't: don't, isn't
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def content_words(text: str | None) -> list[str]:
    """The words that carry a question's meaning, as a sorted set: lower case, no stop words, plural `s` off, and
    `n't` and `cannot` read as `not` ("can't" and "cannot" are "can not")."""
    words = set()
    for word in _WORD.findall((text or "").lower().replace("\u2019", "'")):
        if word.endswith("n't"):
            words |= {_CONTRACTED.get(word, word[:-3]), "not"}
        elif word == "cannot":
            words |= {"can", "not"}
        else:
            words.add(word.removesuffix("'s"))
    words -= STOP_WORDS
    return sorted({w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words})


def negations(words: list[str]) -> str:
    """A text's negation words (of its sorted content words), as one string: equal for two texts that may match."""
    return " ".join(w for w in words if w in NEGATIONS)


@functools.cache
def _seeds(num_perm: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 1 << 63, num_perm, dtype=np.uint64)  # fixed: same words, same keys


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, wrapping in 64 bits: every bit of the input moves about half the output's bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def band_hashes(questions: list[list[str]], num_perm: int, bands: int) -> list[list[int]]:
    """Each question's LSH band keys, for a batch of questions' content words at once: the MinHash signature (per
    permutation, the least 64-bit hash of a word's crc32 xor that permutation's seed) cut into `bands` bands, each
    band's values mixed into one int64. No words, no keys."""
    sizes = np.array([len(words) for words in questions])
    hashed = np.array([zlib.crc32(w.encode()) for words in questions for w in words], dtype=np.uint64)
    if not len(hashed):
        return [[] for _ in questions]
    starts = (np.cumsum(sizes) - sizes)[sizes > 0]
    signatures = np.minimum.reduceat(_mix(hashed[:, None] ^ _seeds(num_perm)), starts, axis=0)
    rows = signatures[:, : bands * (num_perm // bands)].reshape(len(starts), bands, -1)
    mixed = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), rows.shape[:2])
    for j in range(rows.shape[2]):
        mixed = (mixed * np.uint64(0x100000001B3)) ^ rows[:, :, j]  # FNV-style, wrapping in 64 bits
    keys = iter(mixed.view(np.int64).tolist())
    return [next(keys) if size else [] for size in sizes]


def _signatures(batches: Iterator[pd.DataFrame], *, num_perm: int, bands: int) -> Iterator[pd.DataFrame]:
    with np.errstate(over="ignore"):
        for batch in batches:
            words = [content_words(q) for q in batch["text"]]
            keys = band_hashes(words, num_perm, bands)
            negated = [negations(w) for w in words]
            yield pd.DataFrame({"id": batch["id"], "words": words, "negations": negated, "keys": keys})


def near_pairs(
    ctx, rows: DataFrame, near, *, id: str = "question_id", text: str = "question"
) -> list[tuple[str, str, float]]:
    """Pairs of rows whose `text` is at least `near.threshold` alike (a NearDedup) and negated alike: candidates
    from shared LSH bands, then verified exactly."""
    signed = tables.materialize(
        ctx.spark,
        ctx.rt,
        f"{id}_signatures",  # named by the caller's id: the two jobs' dedups never share one
        rows.select(F.col(id).alias("id"), F.col(text).alias("text")).mapInPandas(
            functools.partial(_signatures, num_perm=near.num_perm, bands=near.bands),
            "id string, words array<string>, negations string, keys array<bigint>",
        ),
    )
    keys = signed.select("id", F.posexplode("keys").alias("band", "key"))
    left, right = keys.alias("l"), keys.alias("r")
    candidates = (
        left.join(right, (F.col("l.band") == F.col("r.band")) & (F.col("l.key") == F.col("r.key")))
        .where(F.col("l.id") < F.col("r.id"))
        .select(F.col("l.id").alias("a"), F.col("r.id").alias("b"))
        .distinct()
    )
    words = signed.select("id", "words", "negations")
    both = candidates.join(words.toDF("a", "words_a", "neg_a"), "a").join(words.toDF("b", "words_b", "neg_b"), "b")
    # Words are sorted sets and never empty here (no words, no keys): the exact Jaccard, in the engine.
    similarity = F.size(F.array_intersect("words_a", "words_b")) / F.size(F.array_union("words_a", "words_b"))
    verified = both.where(F.col("neg_a") == F.col("neg_b")).select("a", "b", similarity.alias("similarity"))
    verified = verified.where(F.col("similarity") >= near.threshold)
    return [(r.a, r.b, r.similarity) for r in verified.collect()]


def _close(rows, *, threshold: float):  # no type hints: pyspark would try to infer a UDF type from them
    """The pairs of one block whose unit vectors have a cosine of at least `threshold`, a slice of rows at a time."""
    ids, vectors = rows["id"].to_numpy(), np.stack(rows["vector"].to_numpy()).astype(np.float32)
    found = []
    for start in range(0, len(ids), 1024):
        cosine = vectors[start : start + 1024] @ vectors.T
        i, j = np.nonzero(cosine >= threshold)
        keep = start + i < j
        found.append(pd.DataFrame({"a": ids[start + i[keep]], "b": ids[j[keep]], "similarity": cosine[i, j][keep]}))
    return pd.concat(found) if found else pd.DataFrame({"a": [], "b": [], "similarity": []})


def semantic_pairs(
    ctx, rows: DataFrame, semantic, *, id: str = "question_id", text: str = "question", block: str = "topic"
) -> list[tuple[str, str, float]]:
    """Pairs of rows whose `text` embeddings are at least `semantic.threshold` alike (a SemanticDedup), compared
    within each value of `block` (or across all, with `semantic.block_by` "none")."""
    blocks = F.col(block) if semantic.block_by != "none" else F.lit("all")
    endpoint = ctx.cfg.endpoint(semantic.endpoint)
    embedded = llm_stage.embed(
        ctx,
        rows.select(F.col(id).alias("id"), blocks.alias("block"), F.col(text).alias("text")),
        teacher=endpoint,
        batch=endpoint.batch_size,
        name=f"{id}_embeddings",  # named by the caller's id: the two jobs' dedups never share one
    )
    close = embedded.groupBy("block").applyInPandas(
        functools.partial(_close, threshold=semantic.threshold), "a string, b string, similarity double"
    )
    return [(r.a, r.b, float(r.similarity)) for r in close.collect()]


def groups(pairs: list[tuple[str, str, float]], name: str = "near", id: str = "question_id") -> pd.DataFrame:
    """Connected groups of the matched pairs (union-find over the pairs alone, so the driver holds only the
    duplicates): each member's group (its smallest id) and its highest similarity to another member."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    best: dict[str, float] = {}
    for a, b, similarity in pairs:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
        best[a], best[b] = max(best.get(a, 0.0), similarity), max(best.get(b, 0.0), similarity)
    return pd.DataFrame(
        {id: list(best), f"{name}_group": [root(x) for x in best], f"{name}_similarity": list(best.values())}
    )


def keeper(group: str, id: str, alive: Column, *order: Column | str) -> Column:
    """True for the one row of its group that stays: alive (passed the checks before) first, then `order`, then
    the lowest id. A row in no group is its own (partitioned by its id, so the ungrouped never share one big
    partition)."""
    ranked = [F.when(alive, 0).otherwise(1), *order, id]
    return F.row_number().over(Window.partitionBy(F.coalesce(F.col(group), F.col(id))).orderBy(*ranked)) == 1


def mark(
    ctx, rows: DataFrame, dedup, *, id: str, text: str, block: str, best: Column
) -> tuple[DataFrame, dict[str, int]]:
    """`rows` (with `_earlier`: the first earlier check that failed, null for a row still alive) with its duplicate
    groups and similarities (exact_group, near_group, near_similarity, semantic_group, semantic_similarity) and
    `_duplicate`: exact_duplicate, near_duplicate, semantic_duplicate or null, as `dedup` (a DedupConfig) says.
    Each group keeps one row: alive, then by `best`, then the lowest id. Also the number of near and semantic
    groups."""
    spark = ctx.spark
    alive = F.col("_earlier").isNull()
    if dedup.exact.enabled:
        key = F.when(F.col(text).isNotNull(), F.sha2(normalized_text(text), 256).substr(1, 16))
        size = F.count(F.lit(1)).over(Window.partitionBy(key))
        rows = rows.withColumn("exact_group", F.when(key.isNotNull() & (size > 1), key))
        exact = F.col("exact_group").isNotNull() & ~keeper("exact_group", id, alive, best)
        rows = rows.withColumn("_exact", exact)
    else:
        rows = rows.withColumn("exact_group", F.lit(None).cast("string")).withColumn("_exact", F.lit(False))
    near = groups(near_pairs(ctx, rows, dedup.near, id=id, text=text) if dedup.near.enabled else [], "near", id)
    rows = rows.join(spark.createDataFrame(near, f"{id} string, near_group string, near_similarity double"), id, "left")
    not_exact = alive & ~F.col("_exact")
    rows = rows.withColumn("_near", F.col("near_group").isNotNull() & ~keeper("near_group", id, not_exact, best))
    found = semantic_pairs(ctx, rows, dedup.semantic, id=id, text=text, block=block) if dedup.semantic.enabled else []
    semantic = groups(found, "semantic", id)
    schema = f"{id} string, semantic_group string, semantic_similarity double"
    rows = rows.join(spark.createDataFrame(semantic, schema), id, "left")
    not_near = not_exact & ~F.col("_near")
    rows = rows.withColumn(
        "_semantic", F.col("semantic_group").isNotNull() & ~keeper("semantic_group", id, not_near, best)
    )
    duplicate = F.coalesce(
        F.when(F.col("_exact"), F.lit("exact_duplicate")),
        F.when(F.col("_near"), F.lit("near_duplicate")),
        F.when(F.col("_semantic"), F.lit("semantic_duplicate")),
    )
    counts = {
        "near_groups": int(near["near_group"].nunique()) if len(near) else 0,
        "semantic_groups": int(semantic["semantic_group"].nunique()) if len(semantic) else 0,
    }
    return rows.withColumn("_duplicate", duplicate), counts
