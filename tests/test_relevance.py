"""Answer relevance by reverse query: questions written from each answer, scored by embeddings against the
original question; a pair below the threshold is dropped with its score and reverse questions kept."""

from __future__ import annotations

import json

import pytest
from conftest import context, copy_schema, run_once, where, with_endpoint

from lakesynth.core import tables
from lakesynth.qa import questions, responses
from lakesynth.qa import seed as seeds
from lakesynth.quality import relevance


def _cfg(llm_cfg, server, embeddings=None, **settings):
    """Relevance on, its embeddings from `server` (or the endpoint settings `embeddings`)."""
    section = relevance.RelevanceConfig.model_validate({"enabled": True, **settings})
    cfg = with_endpoint(llm_cfg, "embeddings", **(embeddings or {"base_url": server.base_url, "model": "embed"}))
    return cfg.model_copy(update={"quality": cfg.quality.model_copy(update={"relevance": section})})


@pytest.fixture(scope="module")
def answered(spark, warehouse, teacher_server):
    """Seed, questions and responses, run once for the module; each test checks a copy."""
    return run_once(warehouse, teacher_server, seeds, questions, responses)


def test_every_answered_pair_gets_a_score_and_a_verdict(spark, answered, llm_cfg, teacher_server):
    copy_schema(spark, answered, llm_cfg)
    answered = tables.read(spark, where(llm_cfg), responses.TABLE).where("error IS NULL").count()
    # The stand-in's reverse questions share few words with the originals: their scores spread below 1.
    cfg = _cfg(llm_cfg, teacher_server, threshold=0.2)
    result = relevance.run(context(cfg))
    rows = tables.read(spark, where(cfg), relevance.TABLE).toPandas()
    assert len(rows) == answered and rows.error.isna().all()  # nothing lost
    assert rows.score.between(-1, 1).all() and len(json.loads(rows.questions[0])["questions"]) == 3
    assert (rows.keep == (rows.score >= 0.2)).all()
    assert set(rows.drop_reason.dropna()) <= {"relevance"}
    assert result.metrics["kept"] == rows.keep.sum()
    # Another threshold applies to every row without a call paid again.
    paid = teacher_server.stats.completions
    again = relevance.run(context(_cfg(llm_cfg, teacher_server, threshold=-1.0)))
    assert teacher_server.stats.completions == paid and again.metrics["kept"] == answered
    # Another embeddings model scores differently: every pair is asked and scored again.
    other = _cfg(
        llm_cfg, teacher_server, threshold=-1.0, embeddings={"base_url": teacher_server.base_url, "model": "e2"}
    )
    rescored = relevance.run(context(other))
    assert rescored.metrics["skipped"] == 0 and rescored.rows_out == answered


def test_a_text_that_cannot_be_embedded_is_its_rows_error_and_the_replies_are_kept(
    spark, answered, llm_cfg, teacher_server
):
    """The reverse questions are paid for before they are embedded: an embeddings endpoint that fails leaves every
    row written with its error (asked again on the next run), never a stage that drops its paid replies."""
    from lakesynth.errors import StageError

    copy_schema(spark, answered, llm_cfg)
    answered = tables.read(spark, where(llm_cfg), responses.TABLE).where("error IS NULL").count()
    cfg = _cfg(with_endpoint(llm_cfg, max_retries=0), teacher_server, embeddings={
        "base_url": "http://127.0.0.1:9/v1", "model": "nowhere"})  # fmt: skip
    with pytest.raises(StageError, match="rows failed"):
        relevance.run(context(cfg))
    rows = tables.read(spark, where(cfg), relevance.TABLE).toPandas()
    assert len(rows) == answered and rows.error.str.startswith("embeddings: ").all()
    assert (~rows.keep).all() and set(rows.drop_reason) == {"relevance_error"}
