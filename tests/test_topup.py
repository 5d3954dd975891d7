"""Exactly N kept pairs per seed, when asked: short seeds are asked again and their new questions checked, in
bounded rounds; the seeds that stay short are named with the reasons; a rerun pays nothing."""

from __future__ import annotations

import uuid

import pytest
from conftest import ROOT, write

from lakesynth import pipeline
from lakesynth.core import registry
from lakesynth.core.runtime import Runtime
from lakesynth.qa import questions

STAGES = ["seed", "questions", "critic", "responses", "judge", "relevance", "dedup", "topup", "format"]


def _cfg(warehouse, server, seeds, *overrides):
    return registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [
            f"warehouse={warehouse}",
            f"schema=t_{uuid.uuid4().hex[:10]}",
            f"seed.path={seeds}",
            f"endpoints.teacher.base_url={server.base_url}",
            "endpoints.teacher.model=standin",
            "mlflow.enabled=false",
            "questions.per_seed=2",
            "quality.judge.enabled=true",  # the stand-in judge drops about half the pairs
            *overrides,
        ],
    )


@pytest.mark.slow
def test_short_seeds_are_topped_up_in_bounded_rounds(spark, warehouse, teacher_server, tmp_path):
    teacher_server.reset()
    seeds = write(tmp_path / "s.csv", "topic,question,in_scope\n" + "".join(
        f"cards,How do I do thing {i} with my card?,yes\n" for i in range(6)))  # fmt: skip
    cfg = _cfg(warehouse, teacher_server, seeds, "quality.target_per_seed=2", "quality.max_rounds=4")
    summary = pipeline.run(cfg, STAGES, root=ROOT)
    topup = summary["stages"]["topup"]
    assert topup["status"] == "ok" and topup["seeds_short_before"] > 0 and 1 <= topup["rounds"] <= 4
    rt = Runtime.resolve(cfg)
    kept = spark.table(rt.fqn("pair_verdicts")).where("keep").groupBy("seed_id").count().toPandas()
    reached = set(kept[kept["count"] >= 2].seed_id)
    short = topup["short"]
    assert topup["seeds_short"] == len(short) == 6 - len(reached)
    assert all(text.startswith("kept ") for text in short.values())
    assert topup["seeds_short"] < topup["seeds_short_before"]
    # Every kept pair is a training example, the topped-up ones included.
    assert spark.table(rt.fqn("training_chat")).count() == spark.table(rt.fqn("pair_verdicts")).where("keep").count()
    paid = teacher_server.stats.completions
    again = pipeline.run(cfg, STAGES, root=ROOT)
    if not short:  # all reached: a rerun finds nothing short and pays nothing
        assert again["stages"]["topup"]["rounds"] == 0 and teacher_server.stats.completions == paid


def test_topup_is_off_by_default(spark, warehouse, teacher_server, tmp_path):
    seeds = write(tmp_path / "s.csv", "topic,question,in_scope\ncards,Lost card?,yes\n")
    cfg = _cfg(warehouse, teacher_server, seeds)
    summary = pipeline.run(cfg, ["seed", "questions", "responses", "dedup", "topup"], root=ROOT)
    assert summary["stages"]["topup"]["disabled"] == "quality.target_per_seed is 0"


ALIKE = r"^(?![\s\S]*different angles)[\s\S]*Bill question {}"  # not once the gate asks


def _planted(tmp_path):
    """Two topics of three seeds: billing's questions are planted near-identical (one word apart, the near-dedup
    off so they stay), until a request asks for different angles; cards' are the stand-in's own."""
    seeds = write(tmp_path / "s.csv", "topic,question,in_scope\n" + "".join(
        f"billing,Bill question {i}?,yes\ncards,Card question {i}?,yes\n" for i in "abc"))  # fmt: skip
    rewrite = tuple(
        (ALIKE.format(i), "questions", [f"How do I pay my monthly phone bill online with my card case {i}{k}?"
                                        for k in range(3)])
        for i in "abc"
    )  # fmt: skip
    return seeds, rewrite


def _asked_angles(server) -> list[str]:
    return [m[0]["content"] for m in server.stats.prompts if questions.ANGLES in m[0]["content"]]


def test_diversity_gate_sends_an_alike_topic_back_for_different_angles(spark, warehouse, teacher_server, tmp_path):
    seeds, rewrite = _planted(tmp_path)
    teacher_server.reset(rewrite=rewrite)
    gate = [
        "quality.judge.enabled=false",
        "quality.dedup.near.enabled=false",
        "quality.diversity.gate.enabled=true",
        "quality.max_rounds=1",
    ]
    cfg = _cfg(warehouse, teacher_server, seeds, *gate, "quality.diversity.gate.min_distinct_n=0.3")
    topup = pipeline.run(cfg, STAGES, root=ROOT)["stages"]["topup"]
    assert topup["status"] == "ok" and topup["rounds"] == 1, topup
    sent = topup["sent_back"]
    assert list(sent) == ["billing"], sent  # cards is diverse enough: not sent back
    assert sent["billing"]["distinct_2_before"] < 0.3 < sent["billing"]["distinct_2_after"], sent
    angled = set(_asked_angles(teacher_server))  # a request and its one-token probe are one
    assert len(angled) == 3 and all('topic "billing"' in text for text in angled)  # one per billing seed
    assert all("case " in text for text in angled)  # the questions it has are listed beside the instruction
    rt = Runtime.resolve(cfg)
    kept = spark.table(rt.fqn("pair_verdicts")).where("keep").groupBy("topic").count().toPandas()
    assert dict(zip(kept.topic, kept["count"])) == {"billing": 12, "cards": 6}  # per_seed (2) more per billing seed


def test_diversity_gate_off_changes_nothing(spark, warehouse, teacher_server, tmp_path):
    seeds, rewrite = _planted(tmp_path)
    teacher_server.reset(rewrite=rewrite)
    off = ["quality.judge.enabled=false", "quality.dedup.near.enabled=false", "quality.target_per_seed=2"]
    cfg = _cfg(warehouse, teacher_server, seeds, *off)
    topup = pipeline.run(cfg, STAGES, root=ROOT)["stages"]["topup"]
    assert topup["rounds"] == 0 and "sent_back" not in topup and not _asked_angles(teacher_server), topup
