"""Judge stage: every answered pair scored per criterion, those below a criterion's minimum dropped, none lost."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import context, copy_schema, run_once, where, with_endpoint

from lakesynth.core import tables
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import questions, responses
from lakesynth.qa import seed as seeds
from lakesynth.quality import judge


def _on(cfg, **changes):
    quality = cfg.quality.model_copy(
        update={"judge": cfg.quality.judge.model_copy(update={"enabled": True, **changes})}
    )
    return cfg.model_copy(update={"quality": quality})


@pytest.fixture(scope="module")
def answered(spark, warehouse, teacher_server):
    """Seed, questions and responses, run once for the module; each test judges a copy."""
    return run_once(warehouse, teacher_server, seeds, questions, responses)


def _answered(spark, answered, cfg):
    copy_schema(spark, answered, cfg)
    return tables.read(spark, where(cfg), responses.TABLE).where("error IS NULL").count()


def test_low_scores_are_dropped_with_their_reason_and_nothing_is_lost(spark, answered, llm_cfg, teacher_server):
    cfg = _on(llm_cfg)
    pairs = _answered(spark, answered, cfg)
    teacher_server.reset()
    result = judge.run(context(cfg))
    verdicts = tables.read(spark, where(cfg), judge.TABLE).collect()
    assert len(verdicts) == result.rows_out == pairs  # one verdict per input pair
    dropped = []
    for v in verdicts:
        scores = json.loads(v.scores)  # no critic: the judge labels the question's scope first
        assert set(scores) == {"question_scope", "quality", "scope"} and all(s["reasoning"] for s in scores.values())
        assert v.in_scope == scores["question_scope"]["in_scope"]
        low = [name for name in ("quality", "scope") if scores[name]["score"] < 2]  # the default min_score
        assert v.min_score == min(scores[name]["score"] for name in ("quality", "scope"))
        assert v.keep == (not low) and v.drop_reason == (f"judge:{low[0]}" if low else None)
        if low:
            dropped.append(v.question_id)
    assert 0 < len(dropped) < pairs, "the stand-in scores some answers low"
    assert result.metrics["kept"] == pairs - len(dropped)
    assert sum(result.metrics["dropped"].values()) == len(dropped)
    # The training set takes exactly the kept pairs; the dropped ones stay in their tables with the reason.
    chat_jsonl.run(context(cfg))
    examples = {r.question_id for r in tables.read(spark, where(cfg), chat_jsonl.TABLE).collect()}
    assert examples == {v.question_id for v in verdicts if v.keep} and not examples & set(dropped)
    assert tables.read(spark, where(cfg), responses.TABLE).where("error IS NULL").count() == pairs


def test_a_stricter_minimum_drops_more_and_a_new_criterion_is_a_new_prompt(spark, answered, llm_cfg, teacher_server):
    strict = tuple(c.model_copy(update={"min_score": 3}) for c in judge.CRITERIA)
    cfg = _on(llm_cfg, criteria=strict)
    pairs = _answered(spark, answered, cfg)
    result = judge.run(context(cfg))
    kept = tables.read(spark, where(cfg), judge.TABLE).where("keep").collect()
    assert all(json.loads(v.scores)["quality"]["score"] == 3 for v in kept) and result.rows_out == pairs
    assert judge.step(cfg).prompt_version != judge.step(_on(llm_cfg)).prompt_version


def test_a_judgement_that_does_not_parse_is_the_rows_error_and_is_asked_again(spark, answered, llm_cfg, teacher_server):
    cfg = _on(llm_cfg, max_failure_rate=1.0)
    cfg = with_endpoint(cfg, max_retries=0)
    pairs = _answered(spark, answered, cfg)
    teacher_server.reset(fault_rate=0.3, faults=("malformed", "schema"), seed=4)
    judge.run(context(cfg))
    failed = tables.read(spark, where(cfg), judge.TABLE).where("error IS NOT NULL")
    n_failed = failed.count()
    assert n_failed > 0
    assert failed.where("NOT keep AND drop_reason = 'judge_error' AND scores IS NULL").count() == n_failed
    teacher_server.reset()
    judge.run(context(cfg))
    assert teacher_server.stats.completions == n_failed + 1
    assert tables.read(spark, where(cfg), judge.TABLE).count() == pairs


def test_the_prompt_carries_scope_rules_and_every_criterion(llm_cfg):
    batch = pd.DataFrame({"question": ["Should I buy gold?"], "answer": ["Yes."], "in_scope": [False]})
    critic = llm_cfg.quality.critic.model_copy(update={"enabled": True})  # the critic's label, told to the judge
    (messages,) = judge.step(
        _on(llm_cfg.model_copy(update={"quality": llm_cfg.quality.model_copy(update={"critic": critic})}))
    ).prompts(batch)
    text = messages[0]["content"]
    assert "OUT of scope" in text and "never give investment advice" in text.lower()
    assert "quality:" in text and "scope:" in text and "Should I buy gold?" in text


def test_the_judge_can_call_its_own_model(spark, answered, llm_cfg, teacher_server):
    """The judge endpoint (endpoints.judge) names another model than the teacher's; the verdicts record it."""
    _answered(spark, answered, llm_cfg)
    cfg = _on(with_endpoint(llm_cfg, "judge", model="judge-model"))
    judge.run(context(cfg))
    models = {r.model for r in tables.read(spark, where(cfg), judge.TABLE).collect()}
    assert models == {"judge-model"}
