"""Evaluate stage: the base and the tuned student answer the held-out split, the judge compares them, and the
figures are what the rows say; a rerun generates and pays for nothing."""

from __future__ import annotations

import json

import pytest
from conftest import context, where

from lakesynth.core import tables
from lakesynth.errors import StageSkipped
from lakesynth.qa import evaluate, questions, responses
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import seed as seeds
from lakesynth.training import finetune


def _cfg(llm_cfg):
    """A short fine-tune on one question per seed: the fine-tune's val-loss passes cost a forward per val example."""
    return llm_cfg.model_copy(
        update={
            "questions": llm_cfg.questions.model_copy(update={"per_seed": 1}),
            "finetune": llm_cfg.finetune.model_copy(
                update={"max_steps": 2, "max_length": 64, "learning_rate": 1e-3, "val_examples": 4}
            ),
            "evaluate": llm_cfg.evaluate.model_copy(update={"max_examples": 3, "max_new_tokens": 12}),
        }
    )


@pytest.mark.slow
def test_base_and_tuned_students_are_judged_side_by_side(spark, llm_cfg, teacher_server, capsys):
    cfg = _cfg(llm_cfg)
    for stage in (seeds, questions, responses, chat_jsonl):
        stage.run(context(cfg))
    with pytest.raises(StageSkipped, match="run the finetune stage first"):
        evaluate.run(context(cfg))
    adapter = finetune.run(context(cfg)).files["adapter"]
    teacher_server.reset()
    capsys.readouterr()
    result = evaluate.run(context(cfg))
    # No terminal here (pytest captures stderr): each student's answers end with a progress line, done = total.
    said = capsys.readouterr().err
    assert "evaluate base student: 3/3 done, 0 errors" in said and "evaluate tuned student: 3/3 done" in said
    rt = where(cfg)
    held_out = tables.read(spark, rt, chat_jsonl.TABLE).where("split = 'val'").orderBy("example_id").limit(3)
    ids = [r.example_id for r in held_out.collect()]
    answers = tables.read(spark, rt, evaluate.ANSWERS).collect()
    assert sorted((a.example_id, a.variant) for a in answers) == sorted((i, v) for i in ids for v in ("base", "tuned"))
    assert all(a.adapter == adapter and a.answer is not None for a in answers)
    rows = tables.read(spark, rt, evaluate.TABLE).collect()
    assert sorted(r.example_id for r in rows) == sorted(ids)
    assert teacher_server.stats.completions == len(ids) + 1  # and the one-token preflight
    by_variant = {(a.example_id, a.variant): a.answer for a in answers}
    wins = 0.0
    for r in rows:
        scores = json.loads(r.scores)
        ratings = [sum(s["score"] for s in scores[f"answer_{i}"].values()) / 2 for i in (1, 2)]
        base, tuned = (ratings[1], ratings[0]) if r.tuned_first else (ratings[0], ratings[1])
        assert (r.base_rating, r.tuned_rating) == (base, tuned) and r.tuned_first == evaluate.tuned_first(r.example_id)
        assert r.base_answer == by_variant[(r.example_id, "base")]
        assert r.tuned_answer == by_variant[(r.example_id, "tuned")]
        assert r.winner == ("tuned" if tuned > base else "base" if base > tuned else "tie")
        base_scope = scores["answer_2" if r.tuned_first else "answer_1"]["scope"]["score"]
        assert r.base_scope_ok == (base_scope >= 2) and r.model == "standin"
        wins += {"tuned": 1.0, "tie": 0.5, "base": 0.0}[r.winner]
    m = result.metrics
    assert m["split"] == "val" and m["examples"] == m["judged"] == len(ids) and m["generated"] == 2 * len(ids)
    assert m["win_rate"] == round(wins / len(rows), 3)
    assert m["base_score"] == round(sum(r.base_rating for r in rows) / len(rows), 3)
    assert m["tuned_score"] == round(sum(r.tuned_rating for r in rows) / len(rows), 3)
    assert m["tuned_wins"] + m["base_wins"] + m["ties"] == len(rows)

    teacher_server.reset()
    again = evaluate.run(context(cfg))
    assert again.metrics["generated"] == 0 and teacher_server.stats.completions == 0
    assert again.metrics["win_rate"] == m["win_rate"]


def test_no_fine_tune_on_purpose_is_said_so(cfg):
    """finetune.backend none is a choice: the evaluations say there is no fine-tune to evaluate, and why."""
    from lakesynth.tools import tool_evaluate

    off = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"backend": "none"})})
    for stage in (evaluate, tool_evaluate):
        with pytest.raises(StageSkipped, match="^no fine-tune to evaluate: finetune.backend is none$"):
            stage.run(context(off))


@pytest.mark.slow
def test_held_out_conversations_are_judged_turn_by_turn_on_the_reference_dialog(spark, llm_cfg, teacher_server):
    from lakesynth.config import with_overrides
    from lakesynth.qa import conversation_judge, conversations

    settings = [
        "conversations.enabled=true",
        "conversations.turns=[1, 1]",
        "finetune.max_length=192",
        "finetune.val_examples=2",
    ]
    settings += ["evaluate.max_examples=2", "format.val_fraction=0.1"]  # the fine-tune's val loss: few examples
    cfg = with_overrides(_cfg(llm_cfg), settings)
    for stage in (seeds, questions, responses, conversations):
        stage.run(context(cfg))
    good = {c: {"reasoning": "scripted", "score": 3} for c in ("quality", "scope")}
    good = json.dumps({"user_in_role": {"reasoning": "scripted", "in_role": True}, **good})
    teacher_server.reset(replies=(("(turn ", good),))
    for stage in (conversation_judge, chat_jsonl, finetune):
        stage.run(context(cfg))
    teacher_server.reset()
    result = evaluate.run(context(cfg))
    rt = where(cfg)
    held_out = tables.read(spark, rt, chat_jsonl.TABLE).where("split = 'val'").orderBy("example_id").limit(2).collect()
    items = evaluate.items(held_out)
    for item_id, example, before, turn in items:  # each turn asked on the reference dialog before its reply
        replies = [i for i, m in enumerate(example.messages) if m.role == "assistant"]
        assert item_id == f"{example.example_id}@{turn}" and len(before) == replies[turn - 1]
        assert [m["content"] for m in before] == [m.content for m in example.messages[: len(before)]]
    assert {len(e.messages) for e in held_out} <= {5, 7} and len(items) == sum(
        (len(e.messages) - 1) // 2 for e in held_out
    )
    answers = tables.read(spark, rt, evaluate.ANSWERS).collect()
    assert sorted(a.answer_id for a in answers) == sorted(f"{i[0]}:{v}" for i in items for v in ("base", "tuned"))
    rows = tables.read(spark, rt, evaluate.TURNS).toPandas()
    assert sorted(rows.item_id) == sorted(i[0] for i in items) and rows.error.isna().all()
    assert set(rows.turn) == {i[3] for i in items} and tables.count(spark, rt, evaluate.TABLE) == 0
    m = result.metrics
    assert m["judged"] == m["dialog_turns"] == len(items) and set(m["by_turn"]) == set(rows.turn)
    assert m["base_score"] == round(rows.base_rating.mean(), 3)
    assert teacher_server.stats.completions - teacher_server.stats.probes == len(items)
