"""Bring your own pairs: a dataset made elsewhere runs through the quality gate, format and the stages after it,
with nothing generated, and every verdict joins back to the user's own id."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import ROOT, pairs_config, write

from lakesynth import pipeline
from lakesynth.core import registry
from lakesynth.core.runtime import Runtime
from lakesynth.errors import SeedError

STAGES = ["seed", "questions", "critic", "responses", "judge", "relevance", "dedup", "format"]
PAIRS = [
    {"id": "faq-001", "topic": "cards", "question": "How do I block my card?", "answer": "Open the app, Cards, Block."},
    {"id": "faq-002", "topic": "cards", "question": "how do I block my card", "answer": "Call us on 0800 000."},
    {"id": "faq-003", "topic": "loans", "question": "Can I repay my loan early?", "answer": "Yes, at no fee."},
    {"id": "faq-004", "question": "Should I buy shares?", "answer": "We cannot advise on investments.",
     "in_scope": False},
]  # fmt: skip


def _cfg(warehouse, server, pairs: str, *overrides: str):
    return pairs_config(warehouse, server, pairs, *overrides)


def test_own_pairs_run_through_the_gate_with_nothing_generated(spark, warehouse, teacher_server, tmp_path):
    teacher_server.reset()
    pairs = write(tmp_path / "faq.jsonl", "".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = _cfg(warehouse, teacher_server, pairs, "quality.judge.enabled=true")
    summary = pipeline.run(cfg, STAGES, root=ROOT)
    stages = summary["stages"]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    for stage in ("questions", "responses"):
        assert stages[stage]["imported"] == 4 and stages[stage]["generation"] == "skipped: seed.pairs given"
    assert teacher_server.stats.completions == 4 + 1  # the judge's calls and its preflight, nothing else
    rt = Runtime.resolve(cfg)
    seeds = spark.table(rt.fqn("seed_questions")).toPandas()
    source_ids = {r.seed_id: json.loads(r.metadata)["source_id"] for r in seeds.itertuples()}
    assert sorted(source_ids.values()) == ["faq-001", "faq-002", "faq-003", "faq-004"]
    assert dict(zip(seeds.question, seeds.in_scope))["Should I buy shares?"] is False
    assert dict(zip(seeds.question, seeds.topic))["Should I buy shares?"] == "imported"
    verdicts = spark.table(rt.fqn("pair_verdicts")).toPandas()
    by_id = {source_ids[r.seed_id]: r for r in verdicts.itertuples()}
    assert set(by_id) == set(source_ids.values())  # every pair has its verdict, joined back by the user's id
    assert all(r.source_id == source_ids[r.seed_id] for r in verdicts.itertuples())  # and carries that id itself
    pair = (by_id["faq-001"], by_id["faq-002"])  # one question twice: one kept at most, a dropped one says why
    assert pair[0].exact_group == pair[1].exact_group is not None and not (pair[0].keep and pair[1].keep)
    assert all(p.keep or p.drop_reason in ("exact_duplicate", "judge:quality", "judge:scope") for p in pair)
    chat = spark.table(rt.fqn("training_chat")).toPandas()
    kept = {source_ids[q] for q in verdicts[verdicts.keep].question_id}
    assert {source_ids[q] for q in chat.question_id} == kept
    answers = {m[-1]["content"] for m in chat.messages}
    assert answers == {p["answer"] for p in PAIRS if p["id"] in kept}


def test_a_csv_of_pairs_without_ids_uses_line_numbers(spark, warehouse, teacher_server, tmp_path):
    pairs = write(tmp_path / "pairs.csv", 'question,answer\nLost card?,"Block it in the app, then call us."\n')
    cfg = _cfg(warehouse, teacher_server, pairs)
    pipeline.run(cfg, ["seed", "questions", "responses", "dedup"], root=ROOT)
    rt = Runtime.resolve(cfg)
    (seed,) = spark.table(rt.fqn("seed_questions")).collect()
    assert json.loads(seed.metadata) == {"answer": "Block it in the app, then call us.", "source_id": "1"}
    (answer,) = spark.table(rt.fqn("synthetic_responses")).collect()
    assert answer.answer == "Block it in the app, then call us." and answer.model == "imported"
    (verdict,) = spark.table(rt.fqn("pair_verdicts")).collect()
    assert verdict.source_id == "1"


def test_bad_pairs_are_named_and_nothing_is_written(spark, warehouse, teacher_server, tmp_path):
    rows = [{"id": "a", "question": "Q?", "answer": " "}, {"id": "a", "question": "R?", "answer": "yes"}]
    pairs = write(tmp_path / "bad.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(warehouse, teacher_server, pairs)
    from lakesynth.core.stage import RunContext
    from lakesynth.qa import seed as seeds

    with pytest.raises(SeedError, match="invalid pairs") as error:
        seeds.run(RunContext(cfg, registry.contracts(registry.default_stages())))
    assert str(error.value).endswith("empty answer: row(s) 1") and "duplicate id: row(s) 1, 2" in str(error.value)
    assert (
        not spark.catalog.tableExists(Runtime.resolve(cfg).fqn("seed_questions"))
        or not spark.table(Runtime.resolve(cfg).fqn("seed_questions")).count()
    )


def test_pair_verdicts_left_by_an_older_version_are_made_again(spark, warehouse, teacher_server, tmp_path):
    """pair_verdicts is derived whole each run: one without `source_id` (an older version's) is recreated, not
    refused."""
    from lakesynth.core import tables
    from lakesynth.quality import dedup

    pairs = write(tmp_path / "pairs.jsonl", json.dumps(PAIRS[0]) + "\n")
    cfg = _cfg(warehouse, teacher_server, pairs)
    rt = Runtime.resolve(cfg)
    older = dataclasses.replace(dedup.TABLE, columns=tuple(c for c in dedup.TABLE.columns if c[0] != "source_id"))
    tables.ensure(spark, rt, older)
    summary = pipeline.run(cfg, ["seed", "questions", "responses", "dedup"], root=ROOT)
    assert summary["stages"]["dedup"]["status"] == "ok", summary["stages"]["dedup"]
    assert [r.source_id for r in spark.table(rt.fqn("pair_verdicts")).collect()] == ["faq-001"]
