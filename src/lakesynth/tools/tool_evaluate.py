"""Tool evaluate stage: did the fine-tune make the student better at calling functions? The base and the tuned
student answer the held-out split of `training_tools` (test, or val), and each reply is matched against the
expected calls by the Berkeley Function Calling Leaderboard's AST check (ast_match.py) -> `tool_evaluation`.

Both students answer greedily from one load (the adapter off, then on; student.py), prompted as the examples
are (`json_content`: the system prompt lists the tools, the reply is a JSON list of calls). Accuracy is reported
overall and per category (simple, multiple, parallel, parallel_multiple, irrelevance) for both, as
`base_accuracy` and `tuned_accuracy`. A reply that is not a JSON list of calls counts as wrong.

A trajectory (tools.trajectories: the calls, their results, the final answer) is scored per step: each step of calls
by the AST check, given the reference dialog so far (`base_match` holds only when every step matches), and the
final answer, given the reference calls and results, by the judge (`endpoint`, default `judge`: does it use the
results and state nothing they did not return) and the deterministic check for invented values, into
`tool_answer_judgements` (a rerun pays only the missing judgements). A trajectory succeeds when its calls match and
its answer passes both: `base_trajectory_success` and `tuned_trajectory_success`.
"""

from __future__ import annotations

import functools
import json

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.core.templates import render
from lakesynth.errors import StageSkipped, TableSchemaError
from lakesynth.tools import answer_check, ast_match, steps
from lakesynth.training import evaluation

VARIANTS = ("base", "tuned")


TEMPLATE = """You check the last message of an assistant that answers requests by calling functions (tools).

The user's request:
{{ query }}

The assistant's calls and what they returned:
{{ results }}

The assistant's final answer to the user:
{{ answer }}

Does the final answer use what the calls returned, answer the request, and state nothing they did not return?
First write "reasoning": your answer, in one or two sentences. Then write "passed": true or false."""


class ToolEvaluateConfig(LLMStageConfig):
    enabled: bool = Field(True, description="Compare the base and the fine-tuned student after a local fine-tune.")
    max_examples: int = Field(100, ge=1, description="At most this many held-out examples (by example_id).")
    max_new_tokens: int = Field(256, ge=8, description="Longest student reply, in tokens.")
    endpoint: str = Field("judge", description="The endpoint (a name under endpoints:) judging final answers.")
    template: str = Field(TEMPLATE, description="The final-answer judge's Jinja prompt (query, results, answer).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the judge.")
    max_tokens: int = Field(256, ge=16, description="Completion token limit of the judge.")


class AnswerJudgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reasoning: str
    passed: bool


TABLE = tables.contract(
    "tool_evaluation",
    [
        ("example_id", S),
        ("category", S),
        ("split", S),
        ("inputs", S),
        ("expected", S),
        ("base_reply", S),
        ("tuned_reply", S),
        ("base_match", B),
        ("tuned_match", B),
        ("reference_answer", S),  # a trajectory's: the final answer of the example, null for calls alone
        ("results", S),  # the reference results the final answer is written from
        ("base_answer", S),
        ("tuned_answer", S),
        ("base_invented", S),  # JSON list of the values the answer states that the results and query lack
        ("tuned_invented", S),
    ],
    key="example_id",
    parent="example_id",
    parent_table="training_tools",
)
JUDGEMENTS = tables.contract(
    "tool_answer_judgements",
    [("judgement_id", S), ("example_id", S), ("variant", S), ("inputs", S), ("reasoning", S), ("passed", B)]
    + tables.LLM_ACCOUNTING,
    key="judgement_id",
    parent="example_id",
    parent_table="training_tools",
)


def accuracy(rows: list[dict]) -> dict:
    """Accuracy of each student, overall and per category (rounded), and the counts they come from."""
    figures: dict = {"examples": len(rows)}
    for variant in VARIANTS:
        hits = [r[f"{variant}_match"] for r in rows]
        figures[f"{variant}_accuracy"] = round(sum(hits) / len(hits), 3) if hits else None
        per = {}
        for category in sorted({r["category"] for r in rows}):
            mine = [r[f"{variant}_match"] for r in rows if r["category"] == category]
            per[category] = round(sum(mine) / len(mine), 3)
        figures[f"{variant}_accuracy_by_category"] = per
    return figures


def figure(result: dict):
    """Accuracy per category, base beside tuned, with the overall figures and the example count in the title."""
    import matplotlib.pyplot as plt

    categories = sorted(
        set(result.get("base_accuracy_by_category", {})) | set(result.get("tuned_accuracy_by_category", {}))
    )
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(categories) + 1), 3))
    for offset, variant, color in ((-0.2, "base", "grey"), (0.2, "tuned", "tab:blue")):
        per = result.get(f"{variant}_accuracy_by_category", {})
        ax.bar(
            [i + offset for i in range(len(categories))],
            [per.get(c, 0) for c in categories],
            0.4,
            color=color,
            label=f"{variant} {result.get(f'{variant}_accuracy') or 0:.0%}",
        )
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AST match accuracy")
    ax.set_title(f"tool calls on {result.get('examples', 0)} held-out examples")
    ax.legend()
    fig.tight_layout()
    return fig


def trajectory_figure(result: dict):
    """Per student, the share of trajectories whose calls matched, whose answer passed, and both."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for offset, variant, color in ((-0.2, "base", "grey"), (0.2, "tuned", "tab:blue")):
        ax.bar(
            [offset, 1 + offset],
            [result.get(f"{variant}_answer_pass_rate", 0), result.get(f"{variant}_trajectory_success", 0)],
            0.4,
            color=color,
            label=variant,
        )
    ax.set_xticks([0, 1], ["final answer passed", "trajectory success"])
    ax.set_ylim(0, 1)
    ax.set_title(f"{result.get('trajectories', 0)} held-out trajectories")
    ax.legend()
    fig.tight_layout()
    return fig


def run(ctx: RunContext) -> StageResult:
    cfg, spark, rt = ctx.cfg, ctx.spark, ctx.rt
    settings = cfg.tools.evaluate
    trained = evaluation.fine_tuned(cfg, rt, "tool examples")
    if cfg.tools.output.style != "json_content":
        raise StageSkipped("the AST evaluation reads json_content replies; set tools.output.style: json_content")
    split = evaluation.held_out(cfg)
    held = ctx.read("training_tools").where(F.col("split") == split).orderBy("example_id").limit(settings.max_examples)
    examples = held.select("example_id", "category", "messages").collect()
    if not examples:
        raise StageSkipped(f"the {split} split of training_tools is empty: nothing to evaluate on")
    tools = {r.name: json.loads(r.parameters) for r in ctx.read("tools").select("name", "parameters").collect()}
    try:
        earlier = {
            r.example_id: r.asDict()
            for r in tables.read(spark, rt, TABLE).where(F.col("inputs") == trained["inputs"]).collect()
        }
    except TableSchemaError:  # written by an earlier version: evaluated again, and the table made anew
        earlier = {}
    reused = all(e.example_id in earlier for e in examples)  # this adapter was evaluated on these examples already
    if reused:
        rows = [earlier[e.example_id] for e in examples]
    else:
        rows = generate(ctx, examples, trained, tools, split)
        frame = spark.createDataFrame(rows, schema=TABLE.row_schema)
        tables.overwrite(spark, rt, TABLE, frame, run_id=cfg.run_id)  # the latest adapter's comparison
    queries = {e.example_id: next(m.content for m in e.messages if m.role == "user") for e in examples}
    result = judge(ctx, rows, trained["inputs"], queries)
    result.rows_in, result.rows_out, result.tables = len(rows), 0 if reused else len(rows), [TABLE, JUDGEMENTS]
    result.metrics.update({"split": split, **accuracy(rows), **trajectory_success(ctx, rows, trained["inputs"])})
    if reused:
        result.metrics["reused"] = True
    return result


def generate(ctx: RunContext, examples: list, trained: dict, tools: dict, split: str) -> list[dict]:
    """Both students' replies to every step of every example, each given the reference dialog so far: the calls of
    each step matched by AST, the final answer of a trajectory checked for invented values."""
    from lakesynth.training import student

    settings = ctx.cfg.tools.evaluate
    asked = []  # (example index, message index): each step's prompt is the example up to that message
    plans = []
    for n, e in enumerate(examples):
        messages = [{"role": m.role, "content": m.content} for m in e.messages]
        calls, final = steps.split(messages)
        plans.append((messages, calls, final))
        asked += [(n, i) for i, _ in calls] + ([(n, final)] if final is not None else [])
    prompts = [plans[n][0][:i] for n, i in asked]
    replies: dict[str, dict] = {}
    with student.loaded(evaluation.student_dir(ctx.cfg, trained), trained["adapter"]) as (model, tokenizer):
        for variant in VARIANTS:
            said = student.answer(
                model,
                tokenizer,
                prompts,
                tuned=variant == "tuned",
                max_new_tokens=settings.max_new_tokens,
                label=f"tool_evaluate {variant} student",
                progress_s=ctx.cfg.llm.progress_s,
            )
            replies[variant] = dict(zip(asked, said))
    rows = []
    for n, e in enumerate(examples):
        messages, calls, final = plans[n]
        row = {"example_id": e.example_id, "category": e.category, "split": split, "inputs": trained["inputs"]}
        expected = [c for _, c in calls]
        row["expected"] = json.dumps(expected[0] if len(expected) == 1 else expected, ensure_ascii=False)
        reference = messages[final]["content"] if final is not None else None
        returned = steps.returned_in(messages[final - 1]["content"]) if final is not None else []
        query = next(m["content"] for m in messages if m["role"] == "user")
        row.update(reference_answer=reference, results=json.dumps(returned, ensure_ascii=False) if reference else None)
        for variant in VARIANTS:
            said = [replies[variant][(n, i)] for i, _ in calls]
            row[f"{variant}_reply"] = said[0] if len(said) == 1 else json.dumps(said, ensure_ascii=False)
            row[f"{variant}_match"] = all(
                ast_match.calls_match(c, ast_match.parse_reply(r), tools) for c, r in zip(expected, said)
            )
            answer = replies[variant].get((n, final)) if final is not None else None
            row[f"{variant}_answer"] = answer
            invented = answer_check.invented(answer, query, returned) if answer is not None else None
            row[f"{variant}_invented"] = None if invented is None else json.dumps(invented, ensure_ascii=False)
        rows.append(row)
    return rows


def judge_prompts(batch: pd.DataFrame, *, template: str) -> list[list[dict]]:
    """Rows -> requests: one judgement per student's final answer."""
    return [
        [{"role": "user", "content": render(template, query=q, results=r, answer=a)}]
        for q, r, a in zip(batch["query"], batch["results"], batch["answer"])
    ]


def to_judgement_rows(replies: DataFrame) -> DataFrame:
    reply = llm_stage.parsed(replies, AnswerJudgement)
    return replies.select(
        *[c for c in replies.columns if c not in ("output", "query", "results", "answer")],
        reply.getField("reasoning").alias("reasoning"),
        reply.getField("passed").alias("passed"),
    )


def judge(ctx: RunContext, rows: list[dict], inputs: str, queries: dict[str, str]) -> StageResult:
    """The judge's verdict on each student's final answer of each trajectory (those still missing)."""
    settings = ctx.cfg.tools.evaluate
    answers = [
        (f"{r['example_id']}:{variant}", r["example_id"], variant, inputs, queries[r["example_id"]], r["results"])
        + (r[f"{variant}_answer"] or "",)
        for r in rows
        if r["reference_answer"] is not None
        for variant in VARIANTS
    ]
    schema = ", ".join(f"{c} string" for c in ("judgement_id", "example_id", "variant", "inputs", "query", "results"))
    step = LLMStep(
        name="tool_evaluate",
        table=JUDGEMENTS,
        key="judgement_id",
        columns=("judgement_id", "example_id", "variant", "inputs", "query", "results", "answer"),
        output=AnswerJudgement,
        settings=settings,
        template=settings.template,
        prompts=functools.partial(judge_prompts, template=settings.template),
        rows=to_judgement_rows,
    )
    return llm_stage.run(ctx, step, ctx.spark.createDataFrame(answers, schema + ", answer string"))


def trajectory_success(ctx: RunContext, rows: list[dict], inputs: str) -> dict:
    """Per student: the share of trajectories whose final answer the judge passed with no invented value, and whose
    calls and answer both passed (the trajectory success rate)."""
    judged = {
        (r.example_id, r.variant): r.passed
        for r in tables.read(ctx.spark, ctx.rt, JUDGEMENTS).where(F.col("inputs") == inputs).collect()
    }
    trajectories = [r for r in rows if r["reference_answer"] is not None]
    if not trajectories:
        return {}
    figures: dict = {"trajectories": len(trajectories)}
    for variant in VARIANTS:
        ok = [
            judged.get((r["example_id"], variant)) is True and not json.loads(r[f"{variant}_invented"] or "[]")
            for r in trajectories
        ]
        figures[f"{variant}_answer_pass_rate"] = round(sum(ok) / len(ok), 3)
        success = [a and r[f"{variant}_match"] for a, r in zip(ok, trajectories)]
        figures[f"{variant}_trajectory_success"] = round(sum(success) / len(success), 3)
    return figures


STAGE = Stage(
    name="tool_evaluate",
    help="base vs fine-tuned student on held-out tool examples: calls by AST match per step, accuracy per category, "
    "a trajectory's final answer by the judge",
    run=run,
    reads=("training_tools", "tools"),
    writes=(TABLE, JUDGEMENTS),
    config=ToolEvaluateConfig,
    section="tools.evaluate",
    after=("finetune",),
    figures=lambda ctx, entry: (
        ({"tool_evaluate/accuracy_by_category.png": figure(entry)} if entry.get("examples") else {})
        | ({"tool_evaluate/trajectory_success.png": trajectory_figure(entry)} if entry.get("trajectories") else {})
    ),
)
