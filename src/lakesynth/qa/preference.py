"""Preference stage: the training set's questions -> `training_preference` pairs, and DPO and KTO JSONL.

For each example of `training_chat`, every configured candidate (the teacher at another temperature, a second
model, any endpoint) answers the question into `preference_candidates`. The pair judge (the endpoint of
`quality.judge`, its criteria) then scores all of a question's candidates in one call; a candidate's rating is
the mean of its criteria's scores. Chosen is the best rated, rejected the worst; a tie or a margin below
`preference.min_margin` is kept as a row with its `drop_reason`, never written as a pair. The files follow the
split of `training_chat`: TRL's conversational DPO (`prompt`, `chosen`, `rejected` as message lists) and KTO
(`prompt`, `completion`, `label`: a rating above the middle of the judge's scale is desirable, below it
undesirable, the middle itself is left out). Off by default.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import EndpointSettings, LLMStageConfig, base_dir
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, D, S
from lakesynth.qa import answers as answering
from lakesynth.quality import criteria as judging
from lakesynth.training import examples


class Candidate(LLMStageConfig):
    """One source of candidate answers: the teacher (default) at this temperature, another named endpoint, or a
    GGUF served by the embedded engine (`gguf_path: student`: the packaged base student)."""

    DEFAULT_TEMPLATE: ClassVar[str] = "responses.j2"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Short name, recorded with each answer.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(640, ge=16, description="Completion token limit.")
    gguf_path: str | None = Field(
        None, description='A GGUF the embedded engine serves for this candidate; "student": the packaged base student.'
    )

    @field_validator("gguf_path")
    @classmethod
    def _resolve_gguf(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value or value == "student" or Path(value).is_absolute():
            return value
        return str((base_dir(info) / value).resolve())  # relative to the config file, as an endpoint's gguf_path

    def calls_with(self, cfg) -> EndpointSettings:
        """The named endpoint's settings, or with `gguf_path` the embedded engine serving that GGUF."""
        if not self.gguf_path:
            return super().calls_with(cfg)
        from lakesynth.training import student

        path = str(student.packaged_student_gguf()) if self.gguf_path == "student" else self.gguf_path
        update = {"base_url": "", "model": Path(path).stem, "api_key_env": "", "gguf_path": path}
        return super().calls_with(cfg).model_copy(update=update)


class PreferenceConfig(LLMStageConfig):
    """The candidates, and the judge's call that compares them (its criteria: quality.judge's)."""

    enabled: bool = Field(False, description="Make DPO/KTO preference pairs from the training set's questions.")
    candidates: tuple[Candidate, ...] = Field(
        (Candidate(name="focused", temperature=0.2), Candidate(name="creative", temperature=1.2)),
        min_length=2,
        description="Where the candidate answers come from (at least two).",
    )
    endpoint: str = Field("judge", description="The endpoint the comparing judge calls (a name under endpoints:).")
    min_margin: float = Field(
        0.5, ge=0, description="Smallest rating gap (judge's scale) between chosen and rejected for a kept pair."
    )
    template: str = Field(
        judging.COMPARE_TEMPLATE, description="The comparing judge's Jinja prompt (rules, question, answers)."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="The comparing judge's sampling temperature.")
    max_tokens: int = Field(1024, ge=16, description="The comparing judge's completion token limit.")

    @field_validator("candidates")
    @classmethod
    def _unique(cls, candidates: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
        names = [c.name for c in candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        return candidates


CANDIDATES = tables.contract(
    "preference_candidates",
    [
        ("candidate_id", S),
        ("question_id", S),
        ("seed_id", S),
        ("topic", S),
        ("in_scope", B),
        ("question", S),
        ("candidate", S),
        ("answer", S),
        ("reasoning", S),
    ]
    + tables.LLM_ACCOUNTING,
    key="candidate_id",
    parent="question_id",
    parent_table="training_chat",
)
TABLE = tables.contract(
    "training_preference",
    [("example_id", S), ("question_id", S), ("seed_id", S), ("topic", S)]
    + examples.COLUMNS
    + [
        ("chosen_candidate", S),
        ("rejected_candidate", S),
        ("chosen_model", S),
        ("rejected_model", S),
        ("chosen_rating", D),
        ("rejected_rating", D),
        ("margin", D),
        ("scores", S),
    ]
    + tables.LLM_ACCOUNTING
    + tables.VERDICT,
    key="example_id",
    parent="question_id",
    parent_table="training_chat",
)
FORMATS = {"dpo": "trl_dpo", "kto": "trl_kto"}


def candidate_step(cfg, candidate: Candidate) -> LLMStep:
    """One candidate's answers, asked as the responses stage asks (same rules, same reply shape)."""
    return LLMStep(
        name=f"preference_{candidate.name}",
        table=CANDIDATES,
        key="candidate_id",
        columns=("candidate_id", "question_id", "seed_id", "topic", "in_scope", "question", "candidate"),
        output=answering.Answer,
        settings=candidate,
        template=candidate.template,
        prompts=functools.partial(answering.prompts, template=candidate.template, rules=cfg.use_case.rules),
        rows=answering.to_response_rows,
    )


def to_pair_rows(replies: DataFrame, *, criteria, n: int, min_margin: float, system_prompt: str | None) -> DataFrame:
    """Replies -> rows: each candidate's rating (its criteria's mean score), the best as chosen and the worst
    as rejected (the first best and the last worst, so a tie still names two candidates), kept when the margin
    is positive and at least `min_margin`."""
    reply = llm_stage.parsed(replies, judging.comparison_model(n, criteria))
    ratings = F.array(*[judging.rating(reply, i, criteria) for i in range(1, n + 1)])
    best = F.array_position(ratings, F.array_max(ratings)).cast("int")
    worst = (F.lit(n + 1) - F.array_position(F.reverse(ratings), F.array_min(ratings))).cast("int")

    def pick(prefix: str, index: F.Column) -> F.Column:
        return F.element_at(F.array(*[F.col(f"{prefix}_{i}") for i in range(1, n + 1)]), index)

    def reply_turn(index: F.Column) -> F.Column:
        return F.array(examples.message_column("assistant", pick("answer", index))).cast(examples.MESSAGES)

    ok = F.col("error").isNull()
    margin = F.array_max(ratings) - F.array_min(ratings)
    reason = (
        F.when(~ok, F.lit("preference:judge_error"))
        .when(margin == 0, F.lit("preference:tie"))
        .when(margin < min_margin, F.lit("preference:margin_below_min"))
    )
    names = F.array(*[F.col(f"candidate_{i}") for i in range(1, n + 1)])
    per_candidate = {f"{field}_{i}" for i in range(1, n + 1) for field in ("candidate", "answer", "model")}
    carried = [c for c in replies.columns if c not in {"output", "question", "in_scope", *per_candidate}]
    return replies.select(
        *carried,
        F.col("question_id").alias("example_id"),
        F.lit("preference").alias("shape"),
        F.array(*examples.prompt_turns(F.col("question"), system_prompt)).cast(examples.MESSAGES).alias("messages"),
        F.lit(None).cast(S).alias("tools"),
        F.when(ok, reply_turn(best)).alias("chosen"),
        F.when(ok, reply_turn(worst)).alias("rejected"),
        F.when(ok, F.element_at(names, best)).alias("chosen_candidate"),
        F.when(ok, F.element_at(names, worst)).alias("rejected_candidate"),
        F.when(ok, pick("model", best)).alias("chosen_model"),
        F.when(ok, pick("model", worst)).alias("rejected_model"),
        F.element_at(ratings, best).alias("chosen_rating"),
        F.element_at(ratings, worst).alias("rejected_rating"),
        margin.alias("margin"),
        F.when(ok, F.col("output")).alias("scores"),
        (ok & reason.isNull()).alias("keep"),
        reason.alias("drop_reason"),
    )


def compare_step(cfg) -> LLMStep:
    """The comparison, on the endpoint `preference.endpoint` names (the judge's by default)."""
    p, judged = cfg.preference, cfg.quality.judge
    n, criteria = len(p.candidates), judged.criteria
    return LLMStep(
        name="preference",
        table=TABLE,
        key="question_id",
        columns=(
            "question_id",
            "seed_id",
            "topic",
            "in_scope",
            "question",
            *[f"{field}_{i}" for i in range(1, n + 1) for field in ("candidate", "answer", "model")],
        ),
        output=judging.comparison_model(n, criteria),
        settings=p,
        template=p.template + "".join(c.model_dump_json() for c in criteria),
        prompts=functools.partial(
            judging.compare_prompts, template=p.template, rules=cfg.use_case.rules, criteria=criteria, n=n
        ),
        rows=functools.partial(
            to_pair_rows, criteria=criteria, n=n, min_margin=p.min_margin, system_prompt=cfg.use_case.system_prompt
        ),
    )


def kto_rows(pairs: DataFrame) -> DataFrame:
    """Each judged pair's two answers as unpaired KTO examples: desirable above the middle of the judge's scale,
    undesirable below it; the middle is left out."""
    middle = sum(judging.SCALE) / 2
    sides = []
    for side in ("chosen", "rejected"):
        rating = F.col(f"{side}_rating")
        sides.append(
            pairs.where(F.col(side).isNotNull() & (rating != middle)).select(
                F.concat_ws(":", "example_id", F.lit(side)).alias("example_id"),
                "question_id",
                "shape",
                "messages",
                "tools",
                F.when(rating > middle, F.col(side)).alias("chosen"),
                F.when(rating < middle, F.col(side)).alias("rejected"),
            )
        )
    return sides[0].unionByName(sides[1])


def write_files(ctx: RunContext) -> tuple[dict[str, str], dict[str, int]]:
    """DPO (kept pairs) and KTO (every judged answer off the middle) JSONL, one file per split of training_chat."""
    pairs = ctx.read(TABLE).where(F.col("error").isNull())
    splits = ctx.read("training_chat").select("question_id", "split")
    folder = Path(ctx.rt.files_dir(TABLE.name))
    datasets = {"dpo": pairs.where("keep"), "kto": kto_rows(pairs)}
    files, counts = {}, {}
    for name, rows in datasets.items():
        rows = rows.join(splits, "question_id")
        for split in ("train", "val", "test"):
            if split == "test" and not ctx.cfg.format.test_fraction:
                continue
            target = folder / name / f"{split}.jsonl"
            examples.write_jsonl(rows.where(F.col("split") == split), target, FORMATS[name])
            files[f"{name}_jsonl" if split == "train" else f"{name}_{split}_jsonl"] = str(target)
            counts[f"{name}_{split}"] = sum(1 for _ in target.open(encoding="utf-8"))
    return files, counts


def run(ctx: RunContext) -> StageResult:
    cfg = ctx.cfg
    p = cfg.preference
    questions = (
        ctx.read("training_chat")
        .where(F.col("shape") == "chat")
        .select("question_id", "seed_id", "topic")
        .join(ctx.read("synthetic_responses").select("question_id", "question", "in_scope"), "question_id")
    )
    calls = StageResult()
    for c in p.candidates:
        asked = questions.select(
            F.concat_ws(":", "question_id", F.lit(c.name)).alias("candidate_id"), "*", F.lit(c.name).alias("candidate")
        )
        got = llm_stage.run(ctx, candidate_step(cfg, c), asked)
        calls.errors += got.errors
        calls.metrics[f"{c.name}_answered"] = got.rows_out
    # A question is compared once every candidate has answered it; a failed answer is its candidate row's error.
    answered = ctx.read(CANDIDATES).where(F.col("error").isNull() & F.col("answer").isNotNull())
    compared = questions
    for i, c in enumerate(p.candidates, start=1):
        compared = compared.join(
            answered.where(F.col("candidate") == c.name).select(
                "question_id",
                F.col("candidate").alias(f"candidate_{i}"),
                F.col("answer").alias(f"answer_{i}"),
                F.col("model").alias(f"model_{i}"),
            ),
            "question_id",
        )
    step = compare_step(cfg)
    result = llm_stage.run(ctx, step, compared)
    written = tables.read(ctx.spark, ctx.rt, TABLE)
    files, counts = write_files(ctx)
    result.rows_in = questions.count()
    result.errors += calls.errors
    result.tables = [CANDIDATES, TABLE]
    result.files = files
    result.metrics.update(
        calls.metrics,
        incomplete=result.rows_in - compared.count(),
        **tables.verdict_counts(written),
        **counts,
    )
    return result


STAGE = Stage(
    name="preference",
    help="answer each training question with several candidates, judge them together, and write DPO/KTO pairs",
    run=run,
    reads=("training_chat", "synthetic_responses"),
    writes=(CANDIDATES, TABLE),
    config=PreferenceConfig,
)
