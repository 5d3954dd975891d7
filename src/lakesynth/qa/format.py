"""Format stage: `synthetic_responses` and the taxonomy's `leaf_pairs` -> `training_chat` + one chat JSONL file per
split.

Only answered rows become examples, each checked against the Databricks chat-completion data rules and a length
limit; rejects are counted, never written. A taxonomy's kept pairs (those the grounding check kept) become examples
with their `leaf` and, for knowledge, their `chunk_id`; a pair with a context carries it in the user turn before
the question (`taxonomy.context_in_prompt`), so the student learns to answer from documents. Each example's split
is a seeded hash of its normalised question, so it never moves when data is added or removed, and a question is in
one split; with a taxonomy, the split is stratified by leaf (each leaf its share of every split, exactly).
With `conversations.enabled`, a kept conversation (conversation_verdicts) replaces its pair's example, for a
`conversations.share` of them drawn per pair: the pair, then its turns up to the last kept one, in the same split
as the pair's question.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import L, S
from lakesynth.qa import dialogs, insights
from lakesynth.quality import diversity, signatures
from lakesynth.training import examples
from lakesynth.training.checks import check_examples
from lakesynth.training.splits import SPLIT_TEXT, assign_split, fill_empty_splits, stratified_split


class FormatConfig(Section):
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of each topic's examples in the validation split.")
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of each topic's examples in a test split (0: none)."
    )
    seed: int = Field(42, description="Seed of the split; the same seed and data always split the same way.")
    max_example_tokens: int = Field(
        2048, ge=16, description="Longest example kept, in tokens (estimated at 4 chars/token)."
    )

    @model_validator(mode="after")
    def _fractions(self) -> FormatConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave examples for training")
        return self


TABLE = tables.contract(
    "training_chat",
    [("example_id", S), ("question_id", S), ("seed_id", S), ("topic", S), ("leaf", S), ("chunk_id", S)]
    + examples.COLUMNS
    + [("split", S), ("n_tokens", L)],
    key="example_id",
    parent="question_id",
    parent_table="synthetic_responses",
)
DIVERSITY = diversity.table("example_diversity")
# How the JSONL files are written: Databricks fine-tuning's chat shape, which any chat trainer reads.
EXPORT_FORMAT = "databricks"


def chat_examples(rows: DataFrame, ids: list, asked, *, system_prompt: str | None, later=None) -> DataFrame:
    """One `chat` example per answered row (`answer` set, no `error`): `ids` first (example_id, question_id,
    seed_id, topic, leaf, chunk_id), then the turns (system, the user's `asked`, the assistant's `answer`, and a
    conversation's `later` messages)."""
    turns = examples.prompt_turns(asked, system_prompt) + [examples.message_column("assistant", F.col("answer"))]
    messages = F.array(*turns) if later is None else F.concat(F.array(*turns).cast(examples.MESSAGES), later)
    answered = rows.where(F.col("error").isNull() & F.col("answer").isNotNull() & (F.trim("answer") != ""))
    return answered.select(
        *ids,
        F.col("question").alias(SPLIT_TEXT),
        F.lit("chat").alias("shape"),
        messages.cast(examples.MESSAGES).alias("messages"),
        F.lit(None).cast("string").alias("tools"),
        F.lit(None).cast(examples.MESSAGES).alias("chosen"),
        F.lit(None).cast(examples.MESSAGES).alias("rejected"),
    )


def to_chat_rows(responses: DataFrame, *, system_prompt: str | None) -> DataFrame:
    """One `chat` example per answered response, with `messages` as examples.MESSAGES."""
    none = F.lit(None).cast("string")
    ids = [F.col("question_id").alias("example_id"), "question_id", "seed_id", "topic"]
    ids += [none.alias("leaf"), none.alias("chunk_id")]
    return chat_examples(responses, ids, F.col("question"), system_prompt=system_prompt)


def conversation_rows(
    responses: DataFrame, later: DataFrame, *, system_prompt: str | None, share: float, seed: int
) -> DataFrame:
    """One `chat` example per kept conversation that the `share` draw takes (qa.dialogs.later_messages: the pair,
    then its later messages), split and deduplicated by its first question as the pair's own example would be."""
    chosen = later.where(dialogs.draw_column(seed, "share", F.col("conversation_id")) < share)
    pairs = responses.join(chosen.withColumnRenamed("conversation_id", "question_id"), "question_id")
    none = F.lit(None).cast("string")
    ids = [F.concat(F.col("question_id"), F.lit(":conversation")).alias("example_id"), "question_id", "seed_id"]
    ids += ["topic", none.alias("leaf"), none.alias("chunk_id")]
    return chat_examples(pairs, ids, F.col("question"), system_prompt=system_prompt, later=F.col("later"))


CONTEXT_SEPARATOR = "\n\n"  # between a knowledge example's context and its question, in the user turn


def leaf_chat_rows(pairs: DataFrame, *, system_prompt: str | None, with_context: bool) -> DataFrame:
    """One `chat` example per kept taxonomy pair, the context (when it has one) before the question."""
    asked = F.col("question")
    if with_context:
        asked = F.when(F.col("context").isNotNull(), F.concat(F.col("context"), F.lit(CONTEXT_SEPARATOR), asked))
        asked = asked.otherwise(F.col("question"))
    ids = [F.col("pair_id").alias("example_id"), F.col("pair_id").alias("question_id")]
    ids += [F.lit(None).cast("string").alias("seed_id"), F.col("leaf").alias("topic"), "leaf", "chunk_id"]
    return chat_examples(pairs, ids, asked, system_prompt=system_prompt)


def files_dir(rt: Runtime) -> str:
    """Where the JSONL files go: a Volume on Databricks (the FM API wants one .jsonl there), else the warehouse."""
    return rt.files_dir("training_chat")


def run(ctx: RunContext) -> StageResult:
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    responses = ctx.read("synthetic_responses")
    pairs = ctx.read("leaf_pairs")  # the taxonomy's pairs the grounding check kept, while a taxonomy is configured
    if not cfg.taxonomy.enabled:
        pairs = pairs.limit(0)
    fmt, system = cfg.format, cfg.use_case.system_prompt
    conversations = ctx.read("conversation_turns", kept=False)
    verdicts = ctx.read("conversation_verdicts", kept=False)
    if not cfg.conversations.enabled:
        verdicts = verdicts.limit(0)
    c = cfg.conversations
    dialogs_kept = conversation_rows(
        responses, dialogs.later_messages(conversations, verdicts), system_prompt=system, share=c.share, seed=c.seed
    )
    # Never a pair and its own conversation: they share the first user turn, which dedup keys on.
    singles = responses.join(dialogs_kept.select("question_id"), "question_id", "left_anti")
    chat = (
        to_chat_rows(singles, system_prompt=system)
        .unionByName(dialogs_kept)
        .unionByName(leaf_chat_rows(pairs, system_prompt=system, with_context=cfg.taxonomy.context_in_prompt))
    )
    checked = tables.materialize(spark, rt, "training_chat", check_examples(chat, max_tokens=fmt.max_example_tokens))
    rows_in = responses.count() + pairs.count()
    fractions = {"val_fraction": fmt.val_fraction, "test_fraction": fmt.test_fraction, "seed": fmt.seed}
    candidates = checked.where(F.col("violation").isNull())
    if checked.where(F.col("leaf").isNotNull()).limit(1).collect():  # a taxonomy: each leaf its share, exactly
        stratum = F.coalesce(F.col("leaf"), F.concat(F.lit("topic:"), F.col("topic")))
        valid = stratified_split(
            candidates.withColumn("_stratum", stratum), by=SPLIT_TEXT, strata=["_stratum"], **fractions
        ).drop("_stratum")
    else:
        valid = assign_split(candidates, by=SPLIT_TEXT, **fractions)
    valid = fill_empty_splits(valid, val_fraction=fmt.val_fraction, test_fraction=fmt.test_fraction)
    # Near duplicates, in the run and against earlier runs' signed examples, share one split.
    valid, signed, leakage = signatures.split_apart(ctx, valid, examples=TABLE.name, block="topic", text=SPLIT_TEXT)
    # The table is derived whole from the responses: an atomic overwrite keeps it exact.
    tables.overwrite(spark, rt, TABLE, valid.select(TABLE.row_names), run_id=cfg.run_id)
    written = tables.read(spark, rt, TABLE)
    added = signatures.record(ctx, signed, examples=TABLE.name, job="lakesynth", kept=written)
    asked = ctx.read("seed_questions", kept=False).select("topic")
    if cfg.taxonomy.enabled:
        asked = asked.unionByName(ctx.read("taxonomy_leaves").select(F.col("leaf").alias("topic")))
    alike = diversity.measured(ctx, valid, by="topic", text=SPLIT_TEXT, asked=asked, name=TABLE.name)
    tables.overwrite(spark, rt, DIVERSITY, alike, run_id=cfg.run_id)
    alike = diversity.figures(tables.read(spark, rt, DIVERSITY))
    violations = {
        r.violation: r["count"]
        for r in checked.where(F.col("violation").isNotNull()).groupBy("violation").count().collect()
    }
    folder = Path(files_dir(rt))
    files = {}
    for split in ("train", "val", "test"):
        if split == "test" and not fmt.test_fraction:
            continue
        target = folder / f"{split}.jsonl"
        examples.write_jsonl(written.where(F.col("split") == split), target, EXPORT_FORMAT)
        files[f"{split}_jsonl"] = str(target)
    counts = {r.split: r["count"] for r in written.groupBy("split").count().collect()}
    per_leaf = {r.leaf: r["count"] for r in written.where("leaf IS NOT NULL").groupBy("leaf").count().collect()}
    per_leaf = dict(sorted(per_leaf.items()))
    excluded = rows_in - checked.count()
    return StageResult(
        rows_in=rows_in,
        rows_out=sum(counts.values()),
        errors=sum(violations.values()),
        tables=[TABLE],
        files=files,
        metrics={
            "excluded_unanswered": excluded,
            "violations": violations,
            **leakage,
            "signatures_added": added,
            "diversity": alike,
            **({"examples_per_leaf": per_leaf} if per_leaf else {}),
            **{f"{k}_examples": v for k, v in sorted(counts.items())},
        },
    )


STAGE = Stage(
    name="format",
    help="turn answered questions and kept taxonomy pairs into training_chat and one chat JSONL file per split",
    run=run,
    reads=("synthetic_responses", "leaf_pairs", "conversation_turns", "conversation_verdicts"),
    after=("leaf_topup",),
    writes=(TABLE, DIVERSITY),
    config=FormatConfig,
    figures=lambda ctx, entry: {
        f"report/{name}.png": figure for name, figure in insights.dataset_figures(ctx.spark, ctx.rt).items()
    },
)
