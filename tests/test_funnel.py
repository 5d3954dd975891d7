"""The yield funnel: on planted pairs every generated row lands in exactly one cell (kept in a split, or dropped at
its first failed step with that step's reason), and whatever ends with none kept is a warning."""

from __future__ import annotations

import contextlib
import html
import io
import json
import uuid

import pytest
from conftest import ROOT, context, write

from lakesynth import pipeline
from lakesynth.core import funnel, registry
from lakesynth.core.runtime import Runtime
from lakesynth.errors import ConfigError
from lakesynth.report import funnel as funnel_report
from lakesynth.report import page, show
from lakesynth.report.notebook import NotebookContext
from lakesynth.training import datasets

STAGES = ["seed", "questions", "responses", "dedup", "format"]
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
    """The planted pairs through dedup and format, with the summary and what the run printed. No LLM check: the
    stand-in's verdicts are a hash of the request, so each planted row's outcome is known only without one."""
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
            "quality.critic.enabled=false",
            "format.max_example_tokens=200",
            "mlflow.enabled=false",
        ],
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = pipeline.run(cfg, STAGES, root=ROOT)
    return cfg, summary, printed.getvalue()


def _planted_ids(spark, cfg) -> dict[str, str]:
    """question_id -> the planted pair's id (its `source_id`)."""
    rows = spark.table(Runtime.resolve(cfg).fqn("pair_verdicts")).select("question_id", "source_id").collect()
    return {r.question_id: r.source_id for r in rows}


def test_each_planted_row_lands_in_its_cell(spark, planted):
    """c1 and c2 are one question once normalised: dedup keeps one (c2, the first by question_id) and drops c1;
    c3 and s1 are over the format's token limit."""
    cfg, summary, printed = planted
    rows = funnel.outcomes(context(cfg), funnel.plan(registry.default_stages())).toPandas()
    ids = _planted_ids(spark, cfg)
    cells = {ids[r.item]: (r.step, r.drop_reason, r.split) for r in rows.itertuples()}
    chat = {ids[r.question_id]: r.split for r in spark.table(Runtime.resolve(cfg).fqn("training_chat")).collect()}
    assert set(chat) == {"c2", "l1", "l2"}
    assert cells == {
        "c1": ("dedup", "exact_duplicate", None),
        "c2": (None, None, chat["c2"]),
        "c3": ("format", "format:rejected", None),
        "l1": (None, None, chat["l1"]),
        "l2": (None, None, chat["l2"]),
        "s1": ("format", "format:rejected", None),
    }
    f = summary["funnel"]
    assert [(s["step"], s["in"], s["dropped"], s["kept"], s["reasons"]) for s in f["steps"]] == [
        ("responses", 6, 0, 6, {}),
        ("dedup", 6, 1, 5, {"exact_duplicate": 1}),
        ("format", 5, 2, 3, {"format:rejected": 2}),
    ]
    assert f["generated"] == 6 and f["kept"] == 3 and "pending" not in f
    # The full run prints its funnel and the topic that ends with none kept, and records the funnel.
    assert (
        funnel.line(f) in printed and "funnel: 6 generated -> responses 6 -> dedup 5 -> format 3 -> 3 kept" in printed
    )
    assert "warning: topic 'statements': 0 kept examples, all 1 dropped (format 1)" in printed.splitlines()
    # The splits read alike wherever the funnel is written: its line, its table rows and the dataset card.
    splits = f"train {list(chat.values()).count('train')}, val {list(chat.values()).count('val')}"
    assert f"-> 3 kept ({splits})" in printed and funnel_report.rows(f)[-1]["reasons"] == splits
    assert f"3 kept ({splits})" in datasets.funnel_section(f)
    log = spark.table(Runtime.resolve(cfg).fqn("run_log")).where(f"run_id = '{cfg.run_id}' AND stage = 'funnel'")
    assert log.count() == 1


def test_a_partial_run_records_no_funnel_and_warns_of_nothing(spark, warehouse, teacher_server, tmp_path):
    """`--stages seed,questions`, on a schema where an earlier run (with the critic) left verdicts, answers and
    training rows: its questions are on their way, not dropped: no funnel line, no warning, no funnel in the
    summary or the run_log."""
    pairs = write(tmp_path / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in PAIRS))
    settings = [
        f"warehouse={warehouse}",
        f"schema=t_{uuid.uuid4().hex[:10]}",
        f"seed.pairs={pairs}",
        f"endpoints.teacher.base_url={teacher_server.base_url}",
        "endpoints.teacher.model=standin",
        "endpoints.teacher.price_per_million_prompt_tokens=2",
        "endpoints.teacher.price_per_million_completion_tokens=6",
        "quality.critic.enabled=true",
        "mlflow.enabled=false",
    ]
    first = pipeline.run(
        registry.load_config(ROOT / "conf" / "lakesynth.yml", [*settings, "run_id=first"]),
        ["critic", *STAGES],
        root=ROOT,
    )
    # The critic's tokens and cost per 1,000 kept, from its table's measured tokens and the planted prices.
    f = first["funnel"]
    spend = f["spend"]
    tokens = spend["prompt_tokens"] + spend["completion_tokens"]
    assert tokens > 0 and spend["tokens_per_1000_kept"] == round(tokens * 1000 / f["kept"])
    cost = (spend["prompt_tokens"] * 2 + spend["completion_tokens"] * 6) / 1e6
    assert spend["cost_usd"] == round(cost, 4) and spend["cost_per_1000_kept_usd"] == round(cost * 1000 / f["kept"], 4)
    cfg = registry.load_config(ROOT / "conf" / "lakesynth.yml", [*settings, "run_id=second"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = pipeline.run(cfg, ["seed", "questions"], root=ROOT)
    assert "funnel" not in printed.getvalue() and "warning" not in printed.getvalue(), printed.getvalue()
    assert "funnel" not in summary and "warnings" not in summary
    log = spark.table(Runtime.resolve(cfg).fqn("run_log")).where("run_id = 'second'")
    assert sorted(r.stage for r in log.collect()) == ["questions", "seed"]
    # Its funnel, as a report reads it: only the steps it ran count; its 6 questions are pending, none kept.
    f = funnel.of_run(context(cfg), registry.default_stages())
    assert (f["generated"], f["steps"], f["pending"], f["kept"], f["warnings"]) == (6, [], 6, 0, [])
    assert funnel.line(f) == "funnel: 6 generated -> 6 pending -> 0 kept"
    assert [(r["step"], r["in"], r["kept"]) for r in funnel_report.rows(f)] == [
        ("generated", 6, 6),
        ("pending", 6, 0),
        ("kept", 0, 0),
    ]
    assert "6 generated, 6 pending, 0 kept (no split yet)" in datasets.funnel_section(f)


def test_every_generated_row_lands_in_exactly_one_cell(spark, planted):
    cfg, summary, _ = planted
    ctx = context(cfg)
    stages = registry.default_stages()
    rows = funnel.outcomes(ctx, funnel.plan(stages)).toPandas()
    rt = Runtime.resolve(cfg)
    generated = spark.table(rt.fqn("synthetic_questions")).count()
    assert len(rows) == generated == len(set(rows["item"])) == len(PAIRS)
    # Kept in a split, or dropped with a reason and the step that dropped it: never both, never neither.
    assert (rows["drop_reason"].isna() == rows["split"].notna()).all()
    assert (rows["drop_reason"].isna() == rows["step"].isna()).all()
    chat = {r.question_id: r.split for r in spark.table(rt.fqn("training_chat")).collect()}

    # The summary's funnel adds up, step by step, and per topic.
    f = summary["funnel"]
    assert f["generated"] == len(PAIRS)
    assert f["kept"] + sum(s["dropped"] for s in f["steps"]) == f["generated"]
    assert sum(f["splits"].values()) == f["kept"] == len(chat)
    assert [s["step"] for s in f["steps"]] == ["responses", "dedup", "format"]
    for before, after in zip(f["steps"], f["steps"][1:]):
        assert after["in"] == before["kept"] and before["in"] - before["dropped"] == before["kept"]
    assert sum(f["steps"][-2]["reasons"].values()) == f["steps"][-2]["dropped"]
    topics = f["by"]["topic"]
    assert set(topics) == {"cards", "loans", "statements"}
    assert sum(t["generated"] for t in topics.values()) == f["generated"]
    assert sum(t["kept"] for t in topics.values()) == f["kept"]
    assert f["spend"] == {"prompt_tokens": 0, "completion_tokens": 0}  # the pairs were given: no request made them


def test_a_topic_with_none_kept_is_a_warning_in_the_summary_and_the_report(planted, tmp_path):
    cfg, summary, _ = planted
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
    """A table with the verdicts of the checks that judge it (dedup's, on the answers), and a bad condition named
    rather than a trace."""
    cfg, _, _ = planted
    ctx = NotebookContext(cfg, registry.contracts(registry.default_stages()), Runtime.resolve(cfg))
    stages = registry.default_stages()
    dropped = show.frame(ctx, stages, "synthetic_responses", dropped=True).toPandas()
    ids = _planted_ids(spark, cfg)
    assert [(ids[r.question_id], r.drop_reason, r.keep) for r in dropped.itertuples()] == [
        ("c1", "exact_duplicate", False)
    ]
    loans = show.frame(ctx, stages, "synthetic_responses", where="topic = 'loans'").toPandas()
    assert set(loans.topic) == {"loans"} and len(loans) == 2
    with pytest.raises(ConfigError, match="--where 'no_such_column = 1' is not a condition on its columns"):
        show.frame(ctx, stages, "synthetic_questions", where="no_such_column = 1")
    with pytest.raises(ConfigError, match="no table named 'pairs'"):
        show.frame(ctx, stages, "pairs")
