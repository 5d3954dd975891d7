"""Dedup stage: duplicates across the whole dataset, and every check's verdict in one row per answered pair.

`pair_verdicts` has a row for every answered pair, with the user's `source_id` (the `--pairs` id, else the seed's
id): the critic's, the rule checks', the judge's and the relevance check's score, reasoning, model and prompt version,
its duplicate groups, `keep` and `drop_reason` (the first check that failed: the critic's, the rule checks' (`leak:rules`,
`invented:<value>`, `incomplete`), the judge's, `relevance`,
`exact_duplicate`, `near_duplicate`, `semantic_duplicate`). Format reads only the pairs it keeps.

- Exact: the same question once normalised (normalize.normalized_text).
- Near: Jaccard similarity of the questions' content words (lower case, no stop words, plural `s` dropped) at
  least `threshold`, found by MinHash + LSH bands on the executors (Sail has no pyspark.ml) and verified
  exactly. On content words, a changed or added function word or a reordered phrase is a duplicate, and so is
  one added content word (n of n + 1 words alike: 0.8 and up from 4 words). A swapped word that carries meaning,
  the action ("add" / "remove" a driver) or its object (a "car" / "motorbike" accident), is not: n - 1 of n + 1
  words is below the default 0.8 up to 8 content words, which short questions rarely pass. A changed negation
  ("with" / "with no" injuries, "can" / "can't") never matches. A synonym is a swapped word too, so near dedup
  leaves it to the semantic check.
- Semantic (off by default): cosine of the questions' embeddings (an OpenAI-compatible /embeddings endpoint;
  here by default the packaged all-MiniLM-L6-v2) at least `threshold`, within each topic.
Each group keeps one pair: one that passed the earlier checks, the best judged, then the lowest id. Near and
semantic matching live in duplicates.py, shared with the function-calling job's verdicts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import llm_stage, tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, S
from lakesynth.quality import duplicates

D = tables.T.DoubleType()


class ExactDedup(Section):
    enabled: bool = Field(True, description="Drop a question equal to another once normalised.")


class NearDedup(Section):
    enabled: bool = Field(True, description="Drop a question whose content words nearly equal another's.")
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Jaccard similarity of content words at which two match (0.8: one added word matches, one "
        "swapped word, such as the object of the question, does not, up to 8 content words).",
    )
    num_perm: int = Field(64, ge=8, le=512, description="MinHash permutations (bands x rows per band).")
    bands: int = Field(16, ge=1, description="LSH bands; more bands find more candidates (verified exactly).")


class SemanticDedup(Section):
    enabled: bool = Field(False, description="Drop a question whose embedding is close to another's (costs calls).")
    threshold: float = Field(0.9, gt=0, le=1, description="Cosine similarity at which two questions match.")
    block_by: Literal["topic", "none"] = Field("topic", description="Compare within each topic, or across all.")
    endpoint: str = Field("embeddings", description="The endpoint (a name under endpoints:) that embeds the questions.")


class DedupConfig(Section):
    exact: ExactDedup = Field(default_factory=ExactDedup, description="The same question once normalised.")
    near: NearDedup = Field(default_factory=NearDedup, description="Nearly the same content words (MinHash + LSH).")
    semantic: SemanticDedup = Field(default_factory=SemanticDedup, description="Close embeddings within a topic.")
    across_runs: bool = Field(
        False,
        description="Drop an example that exactly or nearly repeats one an earlier run kept (the signatures table), "
        "with dedup:earlier_run and that example's id (the screen stage).",
    )
    signatures_table: str = Field(
        "",
        description="The signatures table, as catalog.schema.table (empty: `signatures` in the run's schema); one "
        "table can serve several schemas and jobs.",
    )
    split_threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Jaccard similarity of content words at which two examples go to one split together (in the "
        "run, and against earlier runs' signed examples); groups are joined transitively, so a low value chains "
        "alike questions into one split.",
    )

    @field_validator("signatures_table")
    @classmethod
    def _three_parts(cls, name: str) -> str:
        if name and (len(name.split(".")) != 3 or not all(name.split("."))):
            raise ValueError(f"expected catalog.schema.table, got '{name}'")
        return name


TABLE = tables.verdict(
    "pair_verdicts",
    [
        ("question_id", S),
        ("seed_id", S),
        ("source_id", S),
        ("topic", S),
        ("question", S),
        ("critic_score", INT),
        ("critic_reasoning", S),
        ("critic_model", S),
        ("critic_prompt_version", S),
        ("rules_reasoning", S),
        ("rules_model", S),
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


# Each check before dedup: its prefix here, its verdict table, and its own columns (name here -> name there).
CHECKS = (
    ("critic", "question_verdicts", {"score": "score", "reasoning": "reasoning"}),
    ("rules", "rule_verdicts", {"reasoning": "reasoning"}),
    ("judge", "answer_verdicts", {"scores": "scores", "min_score": "min_score"}),
    ("relevance", "relevance_verdicts", {"score": "score", "questions": "questions"}),
)


def verdicts(ctx: RunContext) -> DataFrame:
    """One row per answered pair with the critic's, the judge's and the relevance check's verdicts beside it."""
    answered = ctx.read("synthetic_responses", kept=False).where(
        F.col("error").isNull() & F.col("answer").isNotNull() & (F.trim("answer") != "")
    )
    seeds = ctx.read("seed_questions", kept=False).select("seed_id", "metadata")
    # The user's id: an imported pair's own (`--pairs` id, or its record number, kept in its seed's metadata),
    # else the seed's id, shared by the questions generated from it.
    own = F.when(F.col("model") == llm_stage.IMPORTED, F.get_json_object("metadata", "$.source_id"))
    pairs = answered.join(seeds, "seed_id", "left").select(
        "question_id", "seed_id", F.coalesce(own, F.col("seed_id")).alias("source_id"), "topic", "question"
    )
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
    best = F.col("judge_min_score").desc_nulls_last()  # of a group's pairs that passed the checks, the best judged
    rows, groups = duplicates.mark(ctx, rows, dedup, id="question_id", text="question", block="topic", best=best)
    drop_reason = F.coalesce("_earlier", "_duplicate")
    out = rows.select(
        *[c for c in TABLE.row_names if c not in ("keep", "drop_reason")],
        drop_reason.isNull().cast(B).alias("keep"),
        drop_reason.alias("drop_reason"),
    )
    # Derived whole from the pairs and their verdicts each run: an atomic overwrite keeps it exact.
    tables.overwrite(spark, rt, TABLE, out, run_id=cfg.run_id)
    written = tables.read(spark, rt, TABLE)
    counts = tables.verdict_counts(written)
    total = written.count()
    metrics = {
        **counts,
        "exact_groups": written.where("exact_group IS NOT NULL").select("exact_group").distinct().count(),
        **groups,
    }
    return StageResult(rows_in=total, rows_out=counts["kept"], tables=[TABLE], metrics=metrics)


STAGE = Stage(
    name="dedup",
    help="drop duplicate questions across the dataset (exact, near) and write every check's verdict per "
    "answered pair into pair_verdicts",
    run=run,
    reads=(
        "synthetic_responses",
        "seed_questions",
        "question_verdicts",
        "rule_verdicts",
        "answer_verdicts",
        "relevance_verdicts",
    ),
    writes=(TABLE,),
    config=DedupConfig,
    section="quality.dedup",
)
