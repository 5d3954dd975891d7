"""Checks that need no judge: planted answers that repeat the rules, invent a figure or stop short are dropped with
their reason, and the controls (a figure quoted from the question, a rule followed in the rule's words) are kept."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, pairs_config, write

from lakesynth import pipeline
from lakesynth.core.runtime import Runtime
from lakesynth.quality import rules

LEAK_TEMPLATE = "You can top up in the app under Payments. If the question is out of scope, politely say you cannot "
LEAK_TEMPLATE += "advise on it, why, and where to go instead."
LEAK_RULES = (
    "Never give investment advice: no recommendations to buy, sell or hold any security, fund, crypto-asset or "
    "product, and no predictions of markets or returns. Never give tax advice or legal advice."
)
# (id, question, answer, expected drop_reason or None for a control that must be kept)
PLANTED = [
    ("leak-template", "How do I top up my account?", LEAK_TEMPLATE, "leak:rules"),
    ("leak-rules", "Should I buy bitcoin?", LEAK_RULES, "leak:rules"),
    ("balance", "What is my balance?", "Your current balance is £1,250.00.", "invented:£1,250.00"),
    ("data", "How much data do I have?", "The current amount of mobile data you have left is 15GB.", "invented:15GB"),
    ("date", "When will my new card come?", "Your new card will arrive on 14 March 2025.", "invented:14 March 2025"),
    ("reference", "Did you log my dispute?", "Yes, it is logged under reference number DX-48213.",
     "invented:reference number DX-48213"),
    ("cut", "How do I change my address?", "Open the app, go to Profile and navigate to the ", "incomplete"),
    ("preamble", "Can I raise my card limit?", "Sure, here's how I can help you with that question: ", "incomplete"),
    ("quoted-amount", "I was charged £45.99 twice for one purchase, what do I do?",
     "If you were charged £45.99 twice, open a card dispute in the app under Cards, then Dispute.", None),
    ("quoted-date", "I sent 250 pounds to the wrong account on 3 March, can I get it back?",
     "For the £250 you sent on March 3rd, call us right away: we can ask the other bank to return it.", None),
    ("quoted-data", "My plan gives me 20 GB a month, can I carry unused data over?",
     "Unused data from your 20GB plan does not carry over to the next month.", None),
    ("rule-followed", "I see a payment I did not make, what now?",
     "Block the card in the app immediately or call the 24/7 line on the back of your card, then we look into it.",
     None),
    ("steps", "How do I block my card?", "Here are the steps:\n1. Open the app.\n2. Tap Cards.\n3. Tap Block", None),
]  # fmt: skip


def _cfg(warehouse, server, pairs: str, *overrides: str):
    return pairs_config(warehouse, server, pairs, *overrides)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    rows = [{"id": i, "topic": "cards", "question": q, "answer": a} for i, q, a, _ in PLANTED]
    return write(tmp_path_factory.mktemp("planted") / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _verdicts(spark, cfg) -> dict:
    rt = Runtime.resolve(cfg)
    return {r.source_id: r for r in spark.table(rt.fqn("pair_verdicts")).collect()}


def test_planted_answers_are_dropped_or_kept_exactly_as_planted(spark, warehouse, teacher_server, planted):
    teacher_server.reset()
    cfg = _cfg(warehouse, teacher_server, planted)
    summary = pipeline.run(cfg, ["seed", "questions", "responses", "rule_checks", "dedup", "format"], root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    assert teacher_server.stats.completions == 0  # no judge: nothing was asked
    verdicts = _verdicts(spark, cfg)
    assert {i: v.drop_reason for i, v in verdicts.items()} == {i: why for i, _, _, why in PLANTED}
    for i, _, _, why in PLANTED:  # every verdict says which rule decided and why, kept or not
        v = verdicts[i]
        assert v.rules_model == (f"rule:{why.split(':')[0]}" if why else "rule:incomplete+leak+invented")
        assert v.rules_reasoning and (why is None or "passed" not in v.rules_reasoning)
    rt = Runtime.resolve(cfg)
    rows = {r.question_id: r for r in spark.table(rt.fqn("rule_verdicts")).collect()}
    assert {r.score for r in rows.values()} == {0, 1} and all(r.prompt_version for r in rows.values())
    assert summary["stages"]["rule_checks"]["dropped"] == {
        "incomplete": 2,
        "invented:14 March 2025": 1,
        "invented:15GB": 1,
        "invented:reference number DX-48213": 1,
        "invented:£1,250.00": 1,
        "leak:rules": 2,
    }
    chat = spark.table(rt.fqn("training_chat")).collect()
    assert {m.messages[-1]["content"] for m in chat} == {a for _, _, a, why in PLANTED if why is None}


def test_each_check_has_its_own_switch(spark, warehouse, teacher_server, planted):
    teacher_server.reset()
    off = ["quality.rules.leak.enabled=false", "quality.rules.invented.enabled=false"]
    cfg = _cfg(warehouse, teacher_server, planted, *off)
    pipeline.run(cfg, ["seed", "questions", "responses", "rule_checks", "dedup"], root=ROOT)
    dropped = {i: v.drop_reason for i, v in _verdicts(spark, cfg).items() if v.drop_reason}
    assert dropped == {"cut": "incomplete", "preamble": "incomplete"}
    rt = Runtime.resolve(cfg)
    assert {r.model for r in spark.table(rt.fqn("rule_verdicts")).where("keep").collect()} == {"rule:incomplete"}


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "empty"),
        ("Certainly! I'd be happy to help with that.", "only a preamble"),
        ("You can do it in the app, or", "ends mid-sentence on 'or'"),
        ("The fee is listed in the table below:", "ends on ':'"),
        ("You can close it in the app (Settings", None),  # unclosed, but a whole sentence: left to the judge
        ("Yes, at no fee.", None),
        ('Tap "Block card"', None),
        ("answer", "no sentence: 'answer'"),  # the telecom run's kept answer: its JSON field's name
    ],
)
def test_incomplete_answers(answer, why):
    assert rules.incomplete(answer, rules.DANGLING_WORDS) == why


def test_a_figure_given_in_another_format_is_not_invented():
    given = rules.Given("I paid 1250 pounds on 2025-03-14 for order ab-77 and have 15 gigs left", "")
    answer = "Your payment of £1,250 on 14 March 2025 for order AB77 is noted; the 15 GB stay."
    assert rules.invented(answer, given, rules.FIGURES) == []
    assert rules.invented("That is $1,250.", rules.Given("", "Transfers up to $1,250 are free."), rules.FIGURES) == []
