"""Each question's own scope: the critic (or, with the critic off, the judge) labels it, and the answer is written
and judged for that label, not for the seed's it came from."""

from __future__ import annotations

import json

import pandas as pd
from conftest import ROOT, pairs_config, write

from lakesynth import pipeline
from lakesynth.core.runtime import Runtime
from lakesynth.quality import judge

# (question, the label it came in with, its own scope as the scripted critic or judge says)
PAIRS = [
    ("How can I ensure my internet service is up and running again?", False, True),  # its seed asked about suing
    ("Should I buy shares in Northwind?", True, False),
    ("How do I block my card?", True, True),
]
STAGES = ["seed", "questions", "critic", "responses", "judge", "dedup"]


def _run(spark, warehouse, server, tmp_path, script, *overrides) -> dict[str, pd.DataFrame]:
    rows = [{"id": str(i), "question": q, "answer": "We can help.", "in_scope": s} for i, (q, s, _) in enumerate(PAIRS)]
    pairs = write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = pairs_config(warehouse, server, pairs, "quality.judge.enabled=true", *overrides)
    server.reset(script=script)
    summary = pipeline.run(cfg, STAGES, root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    rt = Runtime.resolve(cfg)
    tables = ("question_verdicts", "synthetic_responses", "answer_verdicts")
    return {t: spark.table(rt.fqn(t)).toPandas().set_index("question_id") for t in tables}


def test_the_critics_label_is_the_questions_scope_for_its_answer_and_judge(spark, warehouse, teacher_server, tmp_path):
    script = tuple((q, {"in_scope": own, "score": 1}) for q, _, own in PAIRS)
    out = _run(spark, warehouse, teacher_server, tmp_path, script, "quality.critic.enabled=true")
    labels = out["question_verdicts"]
    assert dict(zip(labels.question, labels.in_scope)) == {q: own for q, _, own in PAIRS}
    answered = out["synthetic_responses"]
    assert dict(zip(answered.question, answered.in_scope)) == {q: own for q, _, own in PAIRS}  # not the seed's
    judged = out["answer_verdicts"].join(answered[["question"]])
    assert dict(zip(judged.question, judged.in_scope)) == {q: own for q, _, own in PAIRS}
    assert all("question_scope" not in json.loads(s) for s in judged.scores)  # the critic labelled: the judge did not


def test_without_a_critic_the_judge_labels_each_question(spark, warehouse, teacher_server, tmp_path):
    script = tuple((q, {"question_scope": {"reasoning": "what it asks", "in_scope": own}}) for q, _, own in PAIRS)
    out = _run(spark, warehouse, teacher_server, tmp_path, script)
    answered = out["synthetic_responses"]
    assert dict(zip(answered.question, answered.in_scope)) == {q: given for q, given, _ in PAIRS}  # no critic
    judged = out["answer_verdicts"].join(answered[["question"]])
    assert dict(zip(judged.question, judged.in_scope)) == {q: own for q, _, own in PAIRS}
    assert all(json.loads(s)["question_scope"]["reasoning"] == "what it asks" for s in judged.scores)


def test_a_judge_that_labels_the_scope_is_not_told_one():
    batch = pd.DataFrame({"question": ["Can I sue you?"], "answer": ["No."], "in_scope": [False]})
    criteria = judge.JudgeConfig().criteria
    told, asked = (
        judge.prompts(batch, template=judge.TEMPLATE, rules="R", criteria=criteria, label_scope=label)[0][0]["content"]
        for label in (False, True)
    )
    assert "OUT of scope: the chatbot must redirect it" in told and "question_scope" not in told
    assert "OUT of scope" not in asked and "IN scope" not in asked and '"question_scope"' in asked
