"""Critic stage: a verdict on every generated question, and only kept questions are answered."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import context, copy_schema, run_once, where, with_endpoint

from lakesynth.core import tables
from lakesynth.qa import questions, responses
from lakesynth.qa import seed as seeds
from lakesynth.quality import critic


def _on(cfg, **changes):
    quality = cfg.quality.model_copy(
        update={"critic": cfg.quality.critic.model_copy(update={"enabled": True, **changes})}
    )
    return cfg.model_copy(update={"quality": quality})


@pytest.fixture(scope="module")
def asked(spark, warehouse, teacher_server):
    """Seed and questions, run once for the module; each test works on a copy."""
    return run_once(warehouse, teacher_server, seeds, questions)


def test_every_question_gets_a_verdict_and_only_kept_ones_are_answered(spark, asked, llm_cfg, teacher_server):
    cfg = copy_schema(spark, asked, _on(llm_cfg))
    asked = tables.read(spark, where(cfg), questions.TABLE).where("error IS NULL").count()
    teacher_server.reset()
    result = critic.run(context(cfg))
    verdicts = tables.read(spark, where(cfg), critic.TABLE)
    # Nothing disappears: one verdict per question, with its score, reasoning, model and prompt version.
    assert verdicts.count() == result.rows_out == asked
    assert verdicts.where("reasoning IS NOT NULL AND model = 'standin' AND prompt_version IS NOT NULL").count() == asked
    dropped = verdicts.where("NOT keep")
    assert 0 < dropped.count() < asked, "the stand-in scores some questions 0"
    assert {r.drop_reason for r in dropped.collect()} == {"critic"} and dropped.where(
        "score = 0"
    ).count() == dropped.count()
    assert verdicts.where("keep AND drop_reason IS NULL AND score = 1").count() == asked - dropped.count()
    assert result.metrics["kept"] == asked - dropped.count() and result.metrics["dropped"] == {
        "critic": dropped.count()
    }
    # A dropped question costs no answer.
    teacher_server.reset()
    responses.run(context(cfg))
    answered = {r.question_id for r in tables.read(spark, where(cfg), responses.TABLE).collect()}
    assert answered == {r.question_id for r in verdicts.where("keep").collect()}
    assert teacher_server.stats.completions == len(answered) + 1  # and a one-token preflight
    # A rerun pays for nothing.
    teacher_server.reset()
    again = critic.run(context(cfg))
    assert again.metrics["skipped"] == asked and teacher_server.stats.requests == 0


def test_a_reply_that_does_not_parse_is_the_rows_error_and_is_asked_again(spark, asked, llm_cfg, teacher_server):
    cfg = _on(llm_cfg, max_failure_rate=1.0)
    cfg = with_endpoint(cfg, max_retries=0)
    copy_schema(spark, asked, cfg)
    teacher_server.reset(fault_rate=0.3, faults=("malformed", "schema"), seed=3)
    critic.run(context(cfg))
    verdicts = tables.read(spark, where(cfg), critic.TABLE)
    failed = verdicts.where("error IS NOT NULL")
    n_failed = failed.count()
    assert n_failed > 0
    # Never a silent keep or a silent drop: the error is on the row, which is kept out and says why.
    assert failed.where("NOT keep AND drop_reason = 'critic_error' AND score IS NULL").count() == n_failed
    assert context(cfg).read("synthetic_questions").join(failed, "question_id", "left_semi").count() == 0
    teacher_server.reset()
    critic.run(context(cfg))
    assert teacher_server.stats.completions == n_failed + 1
    assert tables.read(spark, where(cfg), critic.TABLE).where("error IS NOT NULL").count() == 0


def test_disabled_critic_keeps_every_question(spark, asked, llm_cfg):
    copy_schema(spark, asked, llm_cfg)
    result = critic.STAGE.execute(context(llm_cfg))
    assert result.metrics == {"disabled": "quality.critic.enabled is false"}
    all_questions = tables.read(spark, where(llm_cfg), questions.TABLE).count()
    assert context(llm_cfg).read("synthetic_questions").count() == all_questions


def test_custom_criteria_reach_the_prompt(llm_cfg):
    cfg = _on(llm_cfg, extra_criteria=("It mentions no competitor bank.",))
    batch = pd.DataFrame({"topic": ["cards"], "question": ["Is Contoso Bank cheaper?"]})
    (messages,) = critic.step(cfg).prompts(batch)
    text = messages[0]["content"]
    assert "It mentions no competitor bank." in text and "It is not harmful." in text
    assert "Is Contoso Bank cheaper?" in text
    assert critic.step(cfg).prompt_version != critic.step(_on(llm_cfg)).prompt_version
