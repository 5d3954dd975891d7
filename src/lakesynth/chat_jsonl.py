"""Format stage: `synthetic_responses` -> `training_chat` + one chat JSONL file per split.

Only answered rows become examples, each checked against the Databricks chat-completion data
rules and a length limit; rejects are counted, never written. Each example's split is a seeded hash of
its normalised question, so it never moves when data is added or removed, and a question is in one split.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from pydantic import Field, model_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth import examples, tables
from lakesynth.config import Section
from lakesynth.runtime import Runtime
from lakesynth.stage import RunContext, Stage, StageResult
from lakesynth.tables import L, S


class FormatConfig(Section):
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of each topic's examples in the validation split.")
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of each topic's examples in a test split (0: none)."
    )
    seed: int = Field(42, description="Seed of the split; the same seed and data always split the same way.")
    max_tokens: int = Field(2048, ge=16, description="Longest example kept, in tokens (estimated at 4 chars/token).")

    @model_validator(mode="after")
    def _fractions(self) -> FormatConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave examples for training")
        return self


ROLES = ("system", "user", "assistant")
# Chat-template control tokens must not appear in content: the trainer adds them itself.
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "[INST]", "<s>")
CHARS_PER_TOKEN = 4  # documented estimate where no tokenizer is at hand (about 4 characters per token in English)


def estimate_tokens(messages: list[dict]) -> int:
    """Tokens of an example by the ~4 characters per token estimate, plus 4 per message for the template."""
    return sum(len(m.get("content") or "") // CHARS_PER_TOKEN + 4 for m in messages)


def chat_violation(messages: list[dict], max_tokens: int) -> str | None:
    """Why an example breaks the chat-completion data rules, or None when it is valid."""
    if not messages:
        return "no messages"
    roles = [m.get("role") for m in messages]
    if any(r not in ROLES for r in roles):
        return f"unknown role in {roles}"
    if "system" in roles[1:]:
        return "system message not first"
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(turns)):
        return f"roles do not alternate user/assistant: {roles}"
    if turns[-1] != "assistant":
        return "does not end with an assistant message"
    if any(not (m.get("content") or "").strip() for m in messages):
        return "empty content"
    if any(tok in (m.get("content") or "") for m in messages for tok in TEMPLATE_TOKENS):
        return "contains chat-template tokens"
    if estimate_tokens(messages) > max_tokens:
        return f"longer than {max_tokens} tokens (estimated)"
    return None


TABLE = tables.contract(
    "training_chat",
    [("example_id", S), ("question_id", S), ("seed_id", S), ("topic", S)]
    + examples.COLUMNS
    + [("split", S), ("n_tokens", L)],
    key="example_id",
    parent="question_id",
    parent_table="synthetic_responses",
)
# The text an example is split by (not a column of the table): its question.
SPLIT_TEXT = "split_text"
DRAW = "_split_draw"  # the example's draw in [0, 1) that decides its split
# How the JSONL files are written: Databricks fine-tuning's chat shape, which any chat trainer reads.
EXPORT_FORMAT = "databricks"


def to_chat_rows(responses: DataFrame, *, system_prompt: str | None) -> DataFrame:
    """One `chat` example per answered response, with `messages` as examples.MESSAGES."""
    turns = examples.prompt_turns(F.col("question"), system_prompt) + [
        examples.message_column("assistant", F.col("answer"))
    ]
    answered = responses.where(F.col("error").isNull() & F.col("answer").isNotNull() & (F.trim("answer") != ""))
    return answered.select(
        F.col("question_id").alias("example_id"),
        "question_id",
        "seed_id",
        "topic",
        F.col("question").alias(SPLIT_TEXT),
        F.lit("chat").alias("shape"),
        F.array(*turns).cast(examples.MESSAGES).alias("messages"),
        F.lit(None).cast("string").alias("tools"),
        F.lit(None).cast(examples.MESSAGES).alias("chosen"),
        F.lit(None).cast(examples.MESSAGES).alias("rejected"),
    )


def check_examples(chat: DataFrame, *, max_tokens: int) -> DataFrame:
    """Adds `violation` (None when valid) and `n_tokens` to each example."""
    schema = T.StructType(
        chat.schema.fields + [T.StructField("violation", T.StringType()), T.StructField("n_tokens", T.LongType())]
    )
    return chat.mapInPandas(functools.partial(_check_batches, max_tokens=max_tokens), schema)


def _check_batches(batches: Iterator[pd.DataFrame], *, max_tokens: int) -> Iterator[pd.DataFrame]:
    for batch in batches:
        messages = [[dict(m) for m in ms] for ms in batch["messages"]]
        yield batch.assign(
            violation=[chat_violation(m, max_tokens) for m in messages], n_tokens=[estimate_tokens(m) for m in messages]
        )


def assign_split(chat: DataFrame, *, by: str, val_fraction: float, test_fraction: float, seed: int) -> DataFrame:
    """Adds `split`, drawn per example from a seeded hash of its normalised text `by` (examples.normalized_text):
    adding or removing data never moves an example, the same question (normalised) is in one split only, and
    each topic gets its share of every split in expectation."""
    digest = F.sha2(F.concat_ws("|", F.lit(str(seed)), examples.normalized_text(by)), 256)
    draw = F.conv(F.substring(digest, 1, 8), 16, 10).cast("double") / float(16**8)  # uniform in [0, 1)
    # No otherwise(): an all-literal CASE is NOT NULL on classic Spark but nullable on Sail (parity suite).
    split = (
        F.when(F.col(DRAW) < val_fraction, "val")
        .when(F.col(DRAW) < val_fraction + test_fraction, "test")
        .when(F.col("example_id").isNotNull(), "train")
    )
    return chat.withColumn(DRAW, draw).withColumn("split", split)


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


def files_dir(rt: Runtime) -> str:
    """Where the JSONL files go: a Volume on Databricks (the FM API wants one .jsonl there), else the warehouse."""
    return rt.files_dir("training_chat")


def run(ctx: RunContext) -> StageResult:
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    responses = ctx.read("synthetic_responses")
    fmt = cfg.format
    checked = tables.materialize(
        spark,
        rt,
        "training_chat",
        check_examples(to_chat_rows(responses, system_prompt=cfg.use_case.system_prompt), max_tokens=fmt.max_tokens),
    )
    rows_in = responses.count()
    valid = assign_split(
        checked.where(F.col("violation").isNull()),
        by=SPLIT_TEXT,
        val_fraction=fmt.val_fraction,
        test_fraction=fmt.test_fraction,
        seed=fmt.seed,
    )
    valid = fill_empty_splits(valid, val_fraction=fmt.val_fraction, test_fraction=fmt.test_fraction)
    out = valid.select(
        *[c for c in TABLE.names if c not in ("run_id", "created_at")],
        F.lit(cfg.run_id).alias("run_id"),
        F.current_timestamp().alias("created_at"),
    )
    fqn = tables.ensure(spark, rt, TABLE)
    # The table is derived whole from the responses: an atomic overwrite keeps it exact.
    tables.conform(out, TABLE).write.mode("overwrite").insertInto(fqn)
    written = tables.read(spark, rt, TABLE)
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
            **{f"{k}_examples": v for k, v in sorted(counts.items())},
        },
    )


STAGE = Stage(
    name="format",
    help="turn answered questions into training_chat and one chat JSONL file per split",
    run=run,
    reads=("synthetic_responses",),
    writes=(TABLE,),
    config=FormatConfig,
)
