"""The yield funnel: on planted pairs every generated row lands in exactly one cell (kept in a split, or dropped at
its first failed step with that step's reason), and whatever ends with none kept is a warning."""

from __future__ import annotations

import html
import json
import uuid

import pytest
from conftest import ROOT, context, write

from lakesynth import pipeline
from lakesynth.core import funnel, registry
from lakesynth.core.runtime import Runtime
from lakesynth.errors import ConfigError
from lakesynth.report import page, show
from lakesynth.report.notebook import NotebookContext

STAGES = ["seed", "questions", "critic", "responses", "dedup", "format"]
LONG = "Open the app, then Cards, then Block. " * 40  # about 380 tokens: over the planted format limit of 200
PAIRS = [
    {"id": "c1", "topic": "cards", "question": "How do I block my card?", "answer": "Open the app, Cards, Block."},
    {"id": "c2", "topic": "cards", "question": "how do I block my card", "answer": "Call us."},  # exact duplicate
    {"id": "c3", "topic": "cards", "question": "Can I order a new card online?", "answer": LONG},  # too long
    {"id": "l1", "topic": "loans", "question": "Can I repay my loan early?", "answer": "Yes, at no fee."},
    {"id": "l2", "topic": "loans", "question": "What is the interest on a car loan?", "answer": "From 4.9%."},
    {"id": "s1", "topic": "statements", "question": "Where do I find my statement?", "answer": LONG},  # too long
]  # fmt: skip


@pytest.fixture(scope="module")
def planted(spark, warehouse, teacher_server, tmp_path_factory):
    """The planted pairs through the quality gate and format (critic and dedup on), with the summary."""
    teacher_server.reset()
    pairs = write(tmp_path_factory.mktemp("funnel") / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [
            f"warehouse={warehouse}",
            f"schema=t_{uuid.uuid4().hex[:10]}",
            f"seed.pairs={pairs}",
            f"endpoints.teacher.base_url={teacher_server.base_url}",
            "endpoints.teacher.model=standin",
            "endpoints.teacher.price_per_million_prompt_tokens=2",
            "endpoints.teacher.price_per_million_completion_tokens=6",
            "quality.critic.enabled=true",
            "format.max_example_tokens=200",
            "mlflow.enabled=false",
        ],
    )
    return cfg, pipeline.run(cfg, STAGES, root=ROOT)


def test_every_generated_row_lands_in_exactly_one_cell(spark, planted):
    cfg, summary = planted
    ctx = context(cfg)
    stages = registry.default_stages()
    rows = funnel.outcomes(ctx, funnel.plan(stages)).toPandas()
    rt = Runtime.resolve(cfg)
    generated = spark.table(rt.fqn("synthetic_questions")).count()
    assert len(rows) == generated == len(set(rows["item"])) == len(PAIRS)
    # Kept in a split, or dropped with a reason and the step that dropped it: never both, never neither.
    assert (rows["drop_reason"].isna() == rows["split"].notna()).all()
    assert (rows["drop_reason"].isna() == rows["step"].isna()).all()
    # The first failed step is the one the checks' own tables say: pair_verdicts' first reason, the critic's for a
    # question never answered, and format's rejection of a kept pair it did not write.
    verdicts = {r.question_id: r for r in spark.table(rt.fqn("pair_verdicts")).collect()}
    chat = {r.question_id: r.split for r in spark.table(rt.fqn("training_chat")).collect()}
    for r in rows.itertuples():
        if r.item in chat:
            assert r.split == chat[r.item] and r.drop_reason is None
        elif r.item in verdicts and not verdicts[r.item].keep:
            assert r.drop_reason == verdicts[r.item].drop_reason
        elif r.item in verdicts:
            assert (r.step, r.drop_reason) == ("format", "format:rejected")
        else:
            assert r.step == "critic"
    by_question = dict(zip(rows["item"], rows["drop_reason"]))
    questions = {r.question: r.question_id for r in spark.table(rt.fqn("synthetic_questions")).collect()}
    long_one = by_question[questions[PAIRS[2]["question"]]]
    assert long_one in ("format:rejected", "critic") or long_one.startswith("judge")  # never kept: it is too long

    # The summary's funnel adds up, step by step, and per topic.
    f = summary["funnel"]
    assert f["generated"] == len(PAIRS)
    assert f["kept"] + sum(s["dropped"] for s in f["steps"]) == f["generated"]
    assert sum(f["splits"].values()) == f["kept"] == len(chat)
    assert [s["step"] for s in f["steps"]] == ["critic", "responses", "dedup", "format"]
    for before, after in zip(f["steps"], f["steps"][1:]):
        assert after["in"] == before["kept"] and before["in"] - before["dropped"] == before["kept"]
    assert sum(f["steps"][-2]["reasons"].values()) == f["steps"][-2]["dropped"]
    topics = f["by"]["topic"]
    assert set(topics) == {"cards", "loans", "statements"}
    assert sum(t["generated"] for t in topics.values()) == f["generated"]
    assert sum(t["kept"] for t in topics.values()) == f["kept"]
    # Tokens and cost per 1,000 kept, from the tables' measured tokens and the planted prices.
    spend = f["spend"]
    tokens = spend["prompt_tokens"] + spend["completion_tokens"]
    assert tokens > 0 and spend["tokens_per_1000_kept"] == round(tokens * 1000 / f["kept"])
    cost = (spend["prompt_tokens"] * 2 + spend["completion_tokens"] * 6) / 1e6
    assert spend["cost_usd"] == round(cost, 4) and spend["cost_per_1000_kept_usd"] == round(cost * 1000 / f["kept"], 4)


def test_a_topic_with_none_kept_is_a_warning_in_the_summary_and_the_report(planted, tmp_path):
    cfg, summary = planted
    f = summary["funnel"]
    empty = [t for t, g in f["by"]["topic"].items() if not g["kept"]]
    assert "statements" in empty  # its one pair is too long to keep
    warned = [w for w in summary["warnings"] if w.startswith("topic 'statements': 0 kept examples")]
    assert len(warned) == 1 and all(any(w.startswith(f"topic '{t}'") for w in f["warnings"]) for t in empty)
    ctx = NotebookContext(cfg, registry.contracts(registry.default_stages()), Runtime.resolve(cfg))
    page.render(ctx, registry.default_stages(), tmp_path / "report.html")
    assert html.escape(warned[0]) in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_step_that_keeps_nothing_is_a_warning():
    """From outcome counts alone: a check that dropped all it saw, and a category requested but never made."""
    cells = [
        {"step": "call_format", "drop_reason": "format:args", "split": None, "count": 3},
        {"step": None, "drop_reason": None, "split": "train", "count": 0},
    ]
    found = funnel.funnel(cells, ["call_format", "call_semantic"])
    found["by"] = {"category": {"simple": {"generated": 3, "kept": 0, "dropped": {"call_format": 3}, "splits": {}},
                                "irrelevance": {"generated": 0, "kept": 0, "dropped": {}, "splits": {}}}}  # fmt: skip
    assert funnel.warnings(found) == [
        "no example kept: all 3 generated rows were dropped",
        "call_format kept none of the 3 rows it saw (format:args 3)",
        "category 'simple': 0 kept examples, all 3 dropped (call_format 3)",
        "category 'irrelevance': 0 kept examples, none generated",
    ]


def test_show_puts_a_tables_rows_beside_its_checks_verdicts(spark, planted):
    """A generated table with the verdicts of the checks that judge it (the critic's here), and a bad condition
    named rather than a trace."""
    cfg, _ = planted
    ctx = NotebookContext(cfg, registry.contracts(registry.default_stages()), Runtime.resolve(cfg))
    stages = registry.default_stages()
    dropped = show.frame(ctx, stages, "synthetic_questions", dropped=True).toPandas()
    critic = spark.table(Runtime.resolve(cfg).fqn("question_verdicts")).where("NOT keep").toPandas()
    assert sorted(dropped.question_id) == sorted(critic.question_id) and len(dropped)
    assert set(dropped.drop_reason) == set(critic.drop_reason) and dropped.critic_reasoning.notna().all()
    assert not dropped.keep.any()
    loans = show.frame(ctx, stages, "synthetic_questions", where="topic = 'loans'").toPandas()
    assert set(loans.topic) == {"loans"} and len(loans) == 2
    with pytest.raises(ConfigError, match="--where 'no_such_column = 1' is not a condition on its columns"):
        show.frame(ctx, stages, "synthetic_questions", where="no_such_column = 1")
    with pytest.raises(ConfigError, match="no table named 'pairs'"):
        show.frame(ctx, stages, "pairs")
