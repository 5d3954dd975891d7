"""Evaluate stage: did the fine-tune make the student better? The base and the tuned student answer the held-out
split of `training_chat` (test, or val when there is no test split), and the pair judge compares the two answers.

Both answers come from one load of the student, the adapter switched off for the base (student.py), greedy, into
`student_answers` (kept per adapter, so a rerun generates nothing twice). The judge (quality.judge's endpoint and
criteria, the preference stage's comparison prompt) scores both in one call, in an order drawn per example so
neither always comes first; `student_evaluation` keeps both answers, both ratings, the winner and the reasoning.
The summary reports `base_score` and `tuned_score` (mean rating on the judge's 1-3 scale), `win_rate` (tuned over
base, a tie counting half) and each one's scope compliance. It measures what it says: a small student after a few
steps may well not win.

A held-out conversation (conversations.enabled) is evaluated turn by turn: at each assistant turn both students
answer the reference dialog so far, and the judge compares the two replies given that dialog, into
`dialog_evaluation` (one row per turn, `item_id` `<example_id>@<turn>`); the summary's figures cover both tables,
and `by_turn` gives each turn's mean ratings.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from typing import Any, Literal

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, D, S
from lakesynth.errors import StageSkipped
from lakesynth.qa import dialogs
from lakesynth.quality import criteria as judging
from lakesynth.training import evaluation

log = logging.getLogger(__name__)


class EvaluateConfig(LLMStageConfig):
    """Which examples the students answer, how long they may answer, and the judge's comparison call."""

    enabled: bool = Field(True, description="Compare the base and the fine-tuned student after each local fine-tune.")
    endpoint: str = Field("judge", description="The endpoint the comparing judge calls (a name under endpoints:).")
    split: Literal["auto", "test", "val"] = Field("auto", description="Held-out split; auto: test if any, else val.")
    max_examples: int = Field(50, ge=1, description="At most this many examples of the split (by example_id).")
    max_new_tokens: int = Field(160, ge=8, description="Longest student answer, in tokens.")
    template: str = Field(judging.COMPARE_TEMPLATE, description="The comparing judge's Jinja prompt.")
    temperature: float = Field(0.0, ge=0, le=2, description="The comparing judge's sampling temperature.")
    max_tokens: int = Field(1024, ge=16, description="The comparing judge's completion token limit.")


ANSWERS = tables.contract(
    "student_answers",
    [
        ("answer_id", S),
        ("example_id", S),
        ("variant", S),
        ("student", S),
        ("adapter", S),
        ("inputs", S),
        ("answer", S),
        ("seconds", D),
    ],
    key="answer_id",
    parent="example_id",
    parent_table="training_chat",
)
# What a comparison row holds, for a whole example (student_evaluation) or a conversation's turn (dialog_evaluation).
COMPARED = [
    ("example_id", S),
    ("question_id", S),
    ("topic", S),
    ("split", S),
    ("inputs", S),
    ("tuned_first", B),
    ("base_answer", S),
    ("tuned_answer", S),
    ("base_rating", D),
    ("tuned_rating", D),
    ("winner", S),
    ("base_scope_ok", B),
    ("tuned_scope_ok", B),
    ("scores", S),
]
TABLE = tables.contract(
    "student_evaluation",
    COMPARED + tables.LLM_ACCOUNTING,
    key="example_id",
    parent="example_id",
    parent_table="training_chat",
)
TURNS = tables.contract(
    "dialog_evaluation",
    [("item_id", S), ("turn", INT), *COMPARED] + tables.LLM_ACCOUNTING,
    key="item_id",
    parent="example_id",
    parent_table="training_chat",
)
VARIANTS = ("base", "tuned")


def tuned_first(example_id: str) -> bool:
    """Which answer the judge reads first, drawn per example: position bias favours neither student."""
    return hashlib.sha256(example_id.encode()).digest()[0] % 2 == 1


def items(examples: list) -> list[tuple[str, Any, list[dict], int]]:
    """What the students answer, as (item id, example, the messages before the answer, turn): a single-turn
    example's answer (item id: the example's), and every assistant turn of a conversation, given the reference
    dialog before it (item id `<example_id>@<turn>`)."""
    out = []
    for e in examples:
        messages = [{"role": m.role, "content": m.content} for m in e.messages]
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if len(replies) == 1:
            out.append((e.example_id, e, messages[:-1], 1))
        else:
            out += [(f"{e.example_id}@{k}", e, messages[:i], k) for k, i in enumerate(replies, start=1)]
    return out


def generate(ctx: RunContext, asked: list, trained: dict) -> int:
    """The answers of both students still missing for this adapter into `student_answers` (answer id
    `<item id>:<variant>`); returns how many."""
    from lakesynth.training import student

    rt, spark = ctx.rt, ctx.spark
    done = {
        r.answer_id
        for r in tables.read(spark, rt, ANSWERS)
        .where(F.col("inputs") == trained["inputs"])
        .select("answer_id")
        .collect()
    }
    todo = {v: [i for i in asked if f"{i[0]}:{v}" not in done] for v in VARIANTS}
    if not any(todo.values()):
        return 0
    rows = []
    model_dir = evaluation.student_dir(ctx.cfg, trained)
    with student.loaded(model_dir, trained["adapter"]) as (model, tokenizer):
        for variant, chosen in todo.items():
            if not chosen:
                continue
            log.info("evaluate: the %s student answers %d questions", variant, len(chosen))
            started = time.monotonic()
            prompts = [before for _, _, before, _ in chosen]
            replies = student.answer(
                model,
                tokenizer,
                prompts,
                tuned=variant == "tuned",
                max_new_tokens=ctx.cfg.evaluate.max_new_tokens,
                label=f"evaluate {variant} student",
                progress_s=ctx.cfg.llm.progress_s,
            )
            each = (time.monotonic() - started) / len(chosen)
            rows += [
                (f"{item}:{variant}", e.example_id, variant, model_dir, trained["adapter"])
                + (trained["inputs"], reply, each)
                for (item, e, _, _), reply in zip(chosen, replies)
            ]
    tables.upsert(spark, rt, ANSWERS, spark.createDataFrame(rows, schema=ANSWERS.row_schema), run_id=ctx.cfg.run_id)
    return len(rows)


def to_evaluation_rows(replies: DataFrame, *, criteria) -> DataFrame:
    """Replies -> rows: each student's rating (its criteria's mean), the winner, and scope compliance."""
    reply = llm_stage.parsed(replies, judging.comparison_model(2, criteria))

    def in_scope(i: int) -> F.Column:
        scope = [c for c in criteria if c.name == "scope"]
        if not scope:
            return F.lit(None).cast("boolean")
        return reply.getField(f"answer_{i}").getField("scope").getField("score") >= scope[0].min_score

    first = F.col("tuned_first")
    one, two = judging.rating(reply, 1, criteria), judging.rating(reply, 2, criteria)
    base, tuned = F.when(first, two).otherwise(one), F.when(first, one).otherwise(two)
    ok = F.col("error").isNull()
    drop = ("output", "question", "in_scope", "answer_1", "answer_2")
    return replies.select(
        *[c for c in replies.columns if c not in drop],
        F.when(first, F.col("answer_2")).otherwise(F.col("answer_1")).alias("base_answer"),
        F.when(first, F.col("answer_1")).otherwise(F.col("answer_2")).alias("tuned_answer"),
        base.alias("base_rating"),
        tuned.alias("tuned_rating"),
        F.when(ok, F.when(tuned > base, "tuned").when(tuned < base, "base").otherwise("tie")).alias("winner"),
        F.when(first, in_scope(2)).otherwise(in_scope(1)).alias("base_scope_ok"),
        F.when(first, in_scope(1)).otherwise(in_scope(2)).alias("tuned_scope_ok"),
        F.when(ok, F.col("output")).alias("scores"),
    )


def step(cfg, table: tables.Table = TABLE) -> LLMStep:
    """The comparing judge's calls: per example into `student_evaluation`, or per conversation turn (its
    `question` the dialog so far) into `dialog_evaluation`."""
    e, judged = cfg.evaluate, cfg.quality.judge
    criteria = judged.criteria
    per_turn = ("item_id", "turn") if table is TURNS else ()
    return LLMStep(
        name="evaluate" if table is TABLE else "evaluate_turns",
        table=table,
        key=table.key,
        columns=per_turn
        + ("example_id", "question_id", "topic", "split", "inputs", "in_scope", "question", "tuned_first")
        + ("answer_1", "answer_2"),
        output=judging.comparison_model(2, criteria),
        settings=e,
        template=e.template + "".join(c.model_dump_json() for c in criteria),
        prompts=functools.partial(
            judging.compare_prompts, template=e.template, rules=cfg.use_case.rules, criteria=criteria, n=2
        ),
        rows=functools.partial(to_evaluation_rows, criteria=criteria),
    )


def summary(rows: DataFrame) -> dict:
    """The comparison's figures over the judged examples."""
    judged = rows.where(F.col("error").isNull())
    win = F.when(F.col("winner") == "tuned", 1.0).when(F.col("winner") == "tie", 0.5).otherwise(0.0)
    agg = judged.agg(
        F.count(F.lit(1)).alias("judged"),
        F.avg("base_rating").alias("base_score"),
        F.avg("tuned_rating").alias("tuned_score"),
        F.avg(win).alias("win_rate"),
        F.avg(F.col("base_scope_ok").cast("double")).alias("base_scope_compliance"),
        F.avg(F.col("tuned_scope_ok").cast("double")).alias("tuned_scope_compliance"),
        F.sum((F.col("winner") == "tuned").cast("int")).alias("tuned_wins"),
        F.sum((F.col("winner") == "base").cast("int")).alias("base_wins"),
        F.sum((F.col("winner") == "tie").cast("int")).alias("ties"),
    ).first()
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in agg.asDict().items() if v is not None}


def figure(result: dict):
    """The comparison as a bar chart: both mean scores, the win rate and the number of comparisons in the title."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(["base", "tuned"], [result.get("base_score", 0), result.get("tuned_score", 0)], color=["grey", "tab:blue"])
    ax.set_ylim(0, 3)
    ax.set_ylabel("mean judged score (1-3)")
    ax.set_title(f"tuned wins {result.get('win_rate', 0):.0%} of {result.get('judged', 0)} comparisons")
    fig.tight_layout()
    return fig


def run(ctx: RunContext) -> StageResult:
    cfg, rt = ctx.cfg, ctx.rt
    trained = evaluation.fine_tuned(cfg, rt, "training files")
    split = evaluation.held_out(cfg, cfg.evaluate.split)
    chat = ctx.read("training_chat").where(F.col("split") == split)
    held = chat.select("example_id", "question_id", "topic", "split", "messages").orderBy("example_id")
    examples = held.limit(cfg.evaluate.max_examples).collect()
    if not examples:
        raise StageSkipped(f"the {split} split of training_chat is empty: nothing to evaluate on")
    asked = items(examples)
    generated = generate(ctx, asked, trained)
    answers = tables.read(ctx.spark, rt, ANSWERS).where(F.col("inputs") == trained["inputs"])
    item = F.regexp_extract("answer_id", r"^(.*):[a-z]+$", 1)
    ids = [e.example_id for e in examples]
    first = ctx.spark.createDataFrame([(i, tuned_first(i)) for i in ids], "example_id string, tuned_first boolean")

    def side(variant: str, key: str) -> DataFrame:
        return answers.where(F.col("variant") == variant).select(item.alias(key), F.col("answer").alias(variant))

    def compared(rows: DataFrame, key: str) -> DataFrame:
        return (
            rows.join(side("base", key), key)
            .join(side("tuned", key), key)
            .select(
                "*",
                F.lit(trained["inputs"]).alias("inputs"),
                F.when(F.col("tuned_first"), F.col("tuned")).otherwise(F.col("base")).alias("answer_1"),
                F.when(F.col("tuned_first"), F.col("base")).otherwise(F.col("tuned")).alias("answer_2"),
            )
        )

    pairs = ctx.read("synthetic_responses", kept=False).select("question_id", "question", "in_scope")
    whole = (
        chat.select("example_id", "question_id", "topic", "split").join(first, "example_id").join(pairs, "question_id")
    )
    result = llm_stage.run(ctx, step(cfg), compared(whole, "example_id"))
    turns = [i for i in asked if i[0] != i[1].example_id]
    current = tables.read(ctx.spark, rt, TABLE).where(F.col("inputs") == trained["inputs"])
    common = [n for n, _ in COMPARED] + ["error"]
    judged = current.join(first.select("example_id"), "example_id").select(common)
    if turns:
        result.add(llm_stage.run(ctx, step(cfg, TURNS), compared(turn_rows(ctx, turns), "item_id")))
        judged_turns = tables.read(ctx.spark, rt, TURNS).where(F.col("inputs") == trained["inputs"])
        judged_turns = judged_turns.join(
            ctx.spark.createDataFrame([(i[0],) for i in turns], "item_id string"), "item_id"
        )
        judged = judged.unionByName(judged_turns.select(common))
    result.rows_in = len(examples)
    result.tables = [ANSWERS, TABLE, TURNS]
    result.metrics.update(
        split=split,
        examples=len(examples),
        generated=generated,
        adapter=trained["adapter"],
        **summary(judged),
    )
    if turns:
        result.metrics["dialog_turns"] = len(turns)
        result.metrics["by_turn"] = by_turn(judged_turns)
    return result


def turn_rows(ctx: RunContext, turns: list) -> DataFrame:
    """One row per conversation turn the students answered: the dialog before it as the judge's `question`, and
    whether the message it answers is in scope (the pair's question for turn 1, else its user message's)."""
    scopes = {
        (r.conversation_id, r.turn): r.in_scope
        for r in ctx.read("conversation_turns", kept=False)
        .where("role = 'user'")
        .join(
            ctx.spark.createDataFrame([(i[1].question_id,) for i in turns], "conversation_id string"), "conversation_id"
        )
        .select("conversation_id", "turn", "in_scope")
        .collect()
    }
    pairs = {
        r.question_id: r.in_scope
        for r in ctx.read("synthetic_responses", kept=False)
        .join(ctx.spark.createDataFrame([(i[1].question_id,) for i in turns], "question_id string"), "question_id")
        .select("question_id", "in_scope")
        .collect()
    }
    rows = [
        (item, k, e.example_id, e.question_id, e.topic, e.split, tuned_first(item))
        + (bool(pairs.get(e.question_id)) if k == 1 else bool(scopes.get((e.question_id, k))),)
        + (dialogs.transcript([m for m in before if m["role"] != "system"]),)
        for item, e, before, k in turns
    ]
    schema = "item_id string, turn int, example_id string, question_id string, topic string, split string"
    return ctx.spark.createDataFrame(rows, schema + ", tuned_first boolean, in_scope boolean, question string")


def by_turn(rows: DataFrame) -> dict:
    """Each conversation turn's mean ratings, base and tuned: where in a dialog the fine-tune helps or hurts."""
    judged = rows.where(F.col("error").isNull()).groupBy("turn")
    means = judged.agg(F.avg("base_rating").alias("base"), F.avg("tuned_rating").alias("tuned")).collect()
    return {r.turn: {"base": round(r.base, 3), "tuned": round(r.tuned, 3)} for r in sorted(means, key=lambda r: r.turn)}


STAGE = Stage(
    name="evaluate",
    help="base vs fine-tuned student on the held-out split, judged side by side (score, win rate, scope)",
    run=run,
    reads=("training_chat", "synthetic_responses", "conversation_turns"),
    writes=(ANSWERS, TABLE, TURNS),
    config=EvaluateConfig,
    after=("finetune",),
    figures=lambda ctx, entry: {"evaluate/base_vs_tuned.png": figure(entry)} if "base_score" in entry else {},
)
