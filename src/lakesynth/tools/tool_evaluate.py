"""Tool evaluate stage: did the fine-tune make the student better at calling functions? The base and the tuned
student answer the held-out split of `training_tools` (test, or val), and each reply is matched against the
expected calls by the Berkeley Function Calling Leaderboard's AST check (ast_match.py) -> `tool_evaluation`.

Both students answer greedily from one load (the adapter off, then on; student.py), prompted as the examples
are (`json_content`: the system prompt lists the tools, the reply is a JSON list of calls). Accuracy is reported
overall and per category (simple, multiple, parallel, parallel_multiple, irrelevance) for both, as
`base_accuracy` and `tuned_accuracy`. A reply that is not a JSON list of calls counts as wrong. No judge is
called: the check is exact.
"""

from __future__ import annotations

import json

from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.errors import StageSkipped
from lakesynth.tools import ast_match
from lakesynth.training import evaluation

VARIANTS = ("base", "tuned")


class ToolEvaluateConfig(Section):
    enabled: bool = Field(True, description="Compare the base and the fine-tuned student after a local fine-tune.")
    max_examples: int = Field(100, ge=1, description="At most this many held-out examples (by example_id).")
    max_new_tokens: int = Field(256, ge=8, description="Longest student reply, in tokens.")


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
    ],
    key="example_id",
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


def run(ctx: RunContext) -> StageResult:
    from lakesynth.training import student

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
    earlier = {
        r.example_id: r.asDict()
        for r in tables.read(spark, rt, TABLE).where(F.col("inputs") == trained["inputs"]).collect()
    }
    if all(e.example_id in earlier for e in examples):  # this adapter was evaluated on these examples already
        rows = [earlier[e.example_id] for e in examples]
        return StageResult(
            rows_in=len(rows), tables=[TABLE], metrics={"split": split, "reused": True, **accuracy(rows)}
        )
    prompts = [[{"role": m.role, "content": m.content} for m in e.messages[:-1]] for e in examples]
    expected = [ast_match.parse_reply(e.messages[-1].content) for e in examples]
    model_dir = evaluation.student_dir(cfg, trained)
    replies = {}
    with student.loaded(model_dir, trained["adapter"]) as (model, tokenizer):
        for variant in VARIANTS:
            replies[variant] = student.answer(
                model,
                tokenizer,
                prompts,
                tuned=variant == "tuned",
                max_new_tokens=settings.max_new_tokens,
                label=f"tool_evaluate {variant} student",
                progress_s=cfg.llm.progress_s,
            )
    rows = []
    for i, e in enumerate(examples):
        row = {"example_id": e.example_id, "category": e.category, "split": split, "inputs": trained["inputs"]}
        row["expected"] = json.dumps(expected[i], ensure_ascii=False)
        for variant in VARIANTS:
            reply = replies[variant][i]
            row[f"{variant}_reply"] = reply
            row[f"{variant}_match"] = ast_match.calls_match(expected[i], ast_match.parse_reply(reply), tools)
        rows.append(row)
    frame = spark.createDataFrame(rows, schema=TABLE.row_schema)
    tables.overwrite(spark, rt, TABLE, frame, run_id=cfg.run_id)  # the latest adapter's comparison
    return StageResult(
        rows_in=len(rows), rows_out=len(rows), tables=[TABLE], metrics={"split": split, **accuracy(rows)}
    )


STAGE = Stage(
    name="tool_evaluate",
    help="base vs fine-tuned student on held-out tool examples, by AST match, accuracy per category",
    run=run,
    reads=("training_tools", "tools"),
    writes=(TABLE,),
    config=ToolEvaluateConfig,
    section="tools.evaluate",
    after=("finetune",),
    figures=lambda ctx, entry: (
        {"tool_evaluate/accuracy_by_category.png": figure(entry)} if entry.get("examples") else {}
    ),
)
