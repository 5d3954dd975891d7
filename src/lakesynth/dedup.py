"""Dedup stage: duplicates across the whole dataset, and every check's verdict in one row per answered pair.

`pair_verdicts` has a row for every answered pair: the critic's, the judge's and the relevance check's score,
reasoning, model and prompt version, its duplicate groups, `keep` and `drop_reason` (the first check that
failed: the critic's, the judge's, `relevance`, `exact_duplicate`, `near_duplicate`, `semantic_duplicate`).
Format reads only the pairs it keeps.

- Exact: the same question once normalised (examples.normalized_text).
- Near: Jaccard similarity of the questions' content words (lower case, no stop words, plural `s` dropped) at
  least `threshold`, found by MinHash + LSH bands on the executors (Sail has no pyspark.ml) and verified
  exactly. On content words, a changed or added function word or a reordered phrase is a duplicate, while a
  changed word that carries meaning ("add" / "remove" a driver) drops the similarity of a short question
  below the threshold. Synonyms are beyond it.
- Semantic (off by default): cosine of the questions' embeddings (an OpenAI-compatible /embeddings endpoint;
  here by default the packaged all-MiniLM-L6-v2) at least `threshold`, within each topic.
Each group keeps one pair: one that passed the earlier checks, the best judged, then the lowest id.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from lakesynth import examples, llm, tables
from lakesynth.config import EmbeddingsConfig, Section, TeacherConfig
from lakesynth.stage import RunContext, Stage, StageResult
from lakesynth.tables import INT, B, S

D = tables.T.DoubleType()


class ExactDedup(BaseModel):
    enabled: bool = Field(True, description="Drop a question equal to another once normalised.")


class NearDedup(BaseModel):
    enabled: bool = Field(True, description="Drop a question whose content words nearly equal another's.")
    threshold: float = Field(0.7, gt=0, le=1, description="Jaccard similarity of content words at which two match.")
    num_perm: int = Field(64, ge=8, le=512, description="MinHash permutations (bands x rows per band).")
    bands: int = Field(16, ge=1, description="LSH bands; more bands find more candidates (verified exactly).")


class SemanticDedup(EmbeddingsConfig):
    enabled: bool = Field(False, description="Drop a question whose embedding is close to another's (costs calls).")
    threshold: float = Field(0.9, gt=0, le=1, description="Cosine similarity at which two questions match.")
    block_by: Literal["topic", "none"] = Field("topic", description="Compare within each topic, or across all.")


class DedupConfig(Section):
    exact: ExactDedup = Field(default_factory=ExactDedup)
    near: NearDedup = Field(default_factory=NearDedup)
    semantic: SemanticDedup = Field(default_factory=SemanticDedup)


TABLE = tables.verdict(
    "pair_verdicts",
    [
        ("question_id", S),
        ("seed_id", S),
        ("topic", S),
        ("question", S),
        ("critic_score", INT),
        ("critic_reasoning", S),
        ("critic_model", S),
        ("critic_prompt_version", S),
        ("judge_scores", S),
        ("judge_min_score", INT),
        ("judge_model", S),
        ("judge_prompt_version", S),
        ("relevance_score", D),
        ("relevance_questions", S),
        ("relevance_model", S),
        ("relevance_prompt_version", S),
        ("exact_group", S),
        ("near_group", S),
        ("near_similarity", D),
        ("semantic_group", S),
        ("semantic_similarity", D),
    ],
    judges="synthetic_responses",
    key="question_id",
)

STOP_WORDS = frozenset(
    "a an the and or but if then so to of in on at by for with from into onto about as is are was were be been "
    "being am do does did doing have has had having i me my mine we our you your he she it its they them their "
    "this that these those there here what which who whom whose when where why how can could would should will "
    "shall may might must please just also too very any some all each every one no not".split()
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def content_words(text: str | None) -> list[str]:
    """The words that carry a question's meaning, as a sorted set: lower case, no stop words, plural `s` off."""
    words = {w.removesuffix("'s") for w in _WORD.findall((text or "").lower())} - STOP_WORDS
    return sorted({w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words})


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
            words = [content_words(q) for q in batch["question"]]
            keys = band_hashes(words, num_perm, bands)
            yield pd.DataFrame({"question_id": batch["question_id"], "words": words, "keys": keys})


def near_pairs(ctx: RunContext, questions: DataFrame, near: NearDedup) -> list[tuple[str, str, float]]:
    """Pairs of questions at least `near.threshold` alike: candidates from shared LSH bands, then verified."""
    signed = tables.materialize(
        ctx.spark,
        ctx.rt,
        "pair_signatures",
        questions.select("question_id", "question").mapInPandas(
            functools.partial(_signatures, num_perm=near.num_perm, bands=near.bands),
            "question_id string, words array<string>, keys array<bigint>",
        ),
    )
    keys = signed.select("question_id", F.posexplode("keys").alias("band", "key"))
    left, right = keys.alias("l"), keys.alias("r")
    candidates = (
        left.join(right, (F.col("l.band") == F.col("r.band")) & (F.col("l.key") == F.col("r.key")))
        .where(F.col("l.question_id") < F.col("r.question_id"))
        .select(F.col("l.question_id").alias("a"), F.col("r.question_id").alias("b"))
        .distinct()
    )
    words = signed.select("question_id", "words")
    both = candidates.join(words.toDF("a", "words_a"), "a").join(words.toDF("b", "words_b"), "b")
    # Words are sorted sets and never empty here (no words, no keys): the exact Jaccard, in the engine.
    similarity = F.size(F.array_intersect("words_a", "words_b")) / F.size(F.array_union("words_a", "words_b"))
    verified = both.select("a", "b", similarity.alias("similarity")).where(F.col("similarity") >= near.threshold)
    return [(r.a, r.b, r.similarity) for r in verified.collect()]


def _embed(batches: Iterator[pd.DataFrame], *, endpoint, teacher: TeacherConfig, batch: int) -> Iterator[pd.DataFrame]:
    for rows in batches:
        vectors = llm.embed(endpoint, teacher, rows["question"].tolist(), batch=batch)
        yield pd.DataFrame({"question_id": rows["question_id"], "block": rows["block"], "vector": list(vectors)})


def _close(rows, *, threshold: float):  # no type hints: pyspark would try to infer a UDF type from them
    """The pairs of one block whose unit vectors have a cosine of at least `threshold`, a slice of rows at a time."""
    ids, vectors = rows["question_id"].to_numpy(), np.stack(rows["vector"].to_numpy()).astype(np.float32)
    found = []
    for start in range(0, len(ids), 1024):
        cosine = vectors[start : start + 1024] @ vectors.T
        i, j = np.nonzero(cosine >= threshold)
        keep = start + i < j
        found.append(pd.DataFrame({"a": ids[start + i[keep]], "b": ids[j[keep]], "similarity": cosine[i, j][keep]}))
    return pd.concat(found) if found else pd.DataFrame({"a": [], "b": [], "similarity": []})


def semantic_pairs(ctx: RunContext, questions: DataFrame, semantic: SemanticDedup) -> list[tuple[str, str, float]]:
    """Pairs of questions whose embeddings are at least `semantic.threshold` alike, compared within blocks."""
    teacher = semantic.endpoint(ctx.cfg.teacher)
    block = F.col("topic") if semantic.block_by == "topic" else F.lit("all")
    with llm.open_endpoint(teacher, embeddings=True) as endpoint:  # the embedded model lives while this runs
        embedded = tables.materialize(
            ctx.spark,
            ctx.rt,
            "pair_embeddings",
            questions.select("question_id", block.alias("block"), "question").mapInPandas(
                functools.partial(_embed, endpoint=endpoint, teacher=teacher, batch=semantic.batch_size),
                "question_id string, block string, vector array<float>",
            ),
        )
    close = embedded.groupBy("block").applyInPandas(
        functools.partial(_close, threshold=semantic.threshold), "a string, b string, similarity double"
    )
    return [(r.a, r.b, float(r.similarity)) for r in close.collect()]


def groups(pairs: list[tuple[str, str, float]], name: str = "near") -> pd.DataFrame:
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
        {"question_id": list(best), f"{name}_group": [root(x) for x in best], f"{name}_similarity": list(best.values())}
    )


def _keeper(group: str, alive: F.Column) -> F.Column:
    """True for the one pair of its group that stays: alive (passed the checks before), best judged, lowest id.
    A pair in no group is its own (partitioned by its id, so the ungrouped never share one big partition)."""
    order = [F.when(alive, 0).otherwise(1), F.col("judge_min_score").desc_nulls_last(), "question_id"]
    by = F.coalesce(F.col(group), F.col("question_id"))
    return F.row_number().over(Window.partitionBy(by).orderBy(*order)) == 1


# Each check before dedup: its prefix here, its verdict table, and its own columns (name here -> name there).
CHECKS = (
    ("critic", "question_verdicts", {"score": "score", "reasoning": "reasoning"}),
    ("judge", "answer_verdicts", {"scores": "scores", "min_score": "min_score"}),
    ("relevance", "relevance_verdicts", {"score": "score", "questions": "questions"}),
)


def verdicts(ctx: RunContext) -> DataFrame:
    """One row per answered pair with the critic's, the judge's and the relevance check's verdicts beside it."""
    answered = ctx.read("synthetic_responses", kept=False).where(
        F.col("error").isNull() & F.col("answer").isNotNull() & (F.trim("answer") != "")
    )
    pairs = answered.select("question_id", "seed_id", "topic", "question")
    for check, table, own in CHECKS:
        columns = {**own, "model": "model", "prompt_version": "prompt_version", "drop": "drop_reason", "keep": "keep"}
        verdicts = ctx.read(table, kept=False).select(
            "question_id", *[F.col(source).alias(f"{check}_{name}") for name, source in columns.items()]
        )
        pairs = pairs.join(verdicts, "question_id", "left")
    return pairs


def run(ctx: RunContext) -> StageResult:
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    dedup = cfg.quality.dedup
    rows = tables.materialize(spark, rt, "pair_verdicts", verdicts(ctx))
    # A verdict row that says "drop" (or a failed check) drops the pair; no verdict row means that check is off.
    earlier = F.coalesce(
        *[
            F.when(F.col(f"{check}_keep").isNull() | F.col(f"{check}_keep"), None).otherwise(
                F.coalesce(f"{check}_drop", F.lit(check))
            )
            for check, _, _ in CHECKS
        ]
    )
    rows = rows.withColumn("_earlier", earlier)
    alive = F.col("_earlier").isNull()
    if dedup.exact.enabled:
        key = F.sha2(examples.normalized_text("question"), 256).substr(1, 16)
        size = F.count(F.lit(1)).over(Window.partitionBy(key))
        rows = rows.withColumn("exact_group", F.when(size > 1, key))
        rows = rows.withColumn("_exact", F.col("exact_group").isNotNull() & ~_keeper("exact_group", alive))
    else:
        rows = rows.withColumn("exact_group", F.lit(None).cast(S)).withColumn("_exact", F.lit(False))
    pairs: list = []
    if dedup.near.enabled:
        pairs = near_pairs(ctx, rows, dedup.near)
    found = groups(pairs)
    near = spark.createDataFrame(found, "question_id string, near_group string, near_similarity double")
    rows = rows.join(near, "question_id", "left")
    not_exact = alive & ~F.col("_exact")
    rows = rows.withColumn("_near", F.col("near_group").isNotNull() & ~_keeper("near_group", not_exact))
    semantic = groups(semantic_pairs(ctx, rows, dedup.semantic) if dedup.semantic.enabled else [], "semantic")
    schema = "question_id string, semantic_group string, semantic_similarity double"
    rows = rows.join(spark.createDataFrame(semantic, schema), "question_id", "left")
    not_near = not_exact & ~F.col("_near")
    rows = rows.withColumn("_semantic", F.col("semantic_group").isNotNull() & ~_keeper("semantic_group", not_near))
    drop_reason = F.coalesce(
        "_earlier",
        F.when(F.col("_exact"), F.lit("exact_duplicate")),
        F.when(F.col("_near"), F.lit("near_duplicate")),
        F.when(F.col("_semantic"), F.lit("semantic_duplicate")),
    )
    out = rows.select(
        *[c for c in TABLE.names if c not in ("keep", "drop_reason", "run_id", "created_at")],
        drop_reason.isNull().cast(B).alias("keep"),
        drop_reason.alias("drop_reason"),
        F.lit(cfg.run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    )
    fqn = tables.ensure(spark, rt, TABLE)
    # Derived whole from the pairs and their verdicts each run: an atomic overwrite keeps it exact.
    tables.conform(out, TABLE).write.mode("overwrite").insertInto(fqn)
    written = tables.read(spark, rt, TABLE)
    counts = tables.verdict_counts(written)
    total = written.count()
    metrics = {
        **counts,
        "exact_groups": written.where("exact_group IS NOT NULL").select("exact_group").distinct().count(),
        "near_groups": int(found["near_group"].nunique()) if len(found) else 0,
        "semantic_groups": int(semantic["semantic_group"].nunique()) if len(semantic) else 0,
    }
    return StageResult(rows_in=total, rows_out=counts["kept"], tables=[TABLE], metrics=metrics)


STAGE = Stage(
    name="dedup",
    help="drop duplicate questions across the dataset (exact, near) and write every check's verdict per "
    "answered pair into pair_verdicts",
    run=run,
    reads=("synthetic_responses", "question_verdicts", "answer_verdicts", "relevance_verdicts"),
    writes=(TABLE,),
    config=DedupConfig,
    section="quality.dedup",
)
