"""Dedup across the dataset, on planted pairs: exact and near duplicates go, controls that differ in a word that
matters stay, and every answered pair has one row in pair_verdicts saying why it was kept or dropped."""

from __future__ import annotations

import pytest
from conftest import context, where, with_endpoint
from pyspark.sql import functions as F

from lakesynth.core import tables
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import responses
from lakesynth.quality import dedup, duplicates, judge

# (id, question): groups of duplicates, each listed best first, and controls.
EXACT = [("e1", "How do I block my card?"), ("e2", "how do I  block my card"), ("e3", "How do I block my card ?")]
NEAR = [
    # a changed function word; a reordered phrase; an added word in a longer question; an added word
    [("n1", "How do I add a second driver to my car insurance policy?"),
     ("n2", "How can I add a second driver to my car insurance policy?"),
     ("n3", "To my car insurance policy, how do I add a second driver?")],
    [("n4", "What documents do I need to open a joint savings account online?"),
     ("n5", "Which documents do I need to open a joint savings account online today?")],
    [("n6", "How do I report a lost credit card abroad?"),
     ("n7", "How do I report a lost credit card while abroad?")],
]  # fmt: skip
CONTROLS = [
    ("c1", "How do I add a driver to my policy?"),
    ("c2", "How do I remove a driver from my policy?"),
    ("c3", "How much does it cost to insure my car?"),
    ("c4", "How much does it cost to insure my motorbike?"),
    ("c5", "How do I increase my card limit?"),
    ("c6", "How do I decrease my card limit?"),
    # issue 24: another object and a negation, in questions long enough that one word is little of the whole
    ("c7", "How do I file a claim after a minor car accident with no injuries?"),
    ("c8", "How do I file a claim after a minor motorbike accident with injuries?"),
    ("c9", "How do I file a claim after a minor car accident with injuries?"),  # c7 less its "no"; c8's object swapped
    ("c10", "Can I cancel my credit card online today?"),
    ("c11", "Can't I cancel my credit card online today?"),
    ("c12", "Can I travel abroad with my debit card this summer?"),
    ("c13", "Can I travel abroad without my debit card this summer?"),
    ("c14", "How do I insure my new car against theft and fire damage?"),
    ("c15", "How do I insure my new van against theft and fire damage?"),
    # a synonym is a swapped word too: near dedup keeps it (the semantic check is the one for synonyms)
    ("c16", "What documents do I need to open a joint savings account on the web?"),
]
WORDS = "mortgage pension overdraft cheque isa bond loan salary branch pin app statement fraud tax crypto gold".split()
OTHERS = [(f"o{i:02d}", f"What should I know about the {w} product?") for i, w in enumerate(WORDS)]


def _write(spark, cfg, table, rows: list[dict]) -> None:
    """Planted rows into `table`: the given fields, the others null, by a run named `planted`."""
    frame = spark.createDataFrame(rows)
    frame = frame.select(*frame.columns, *[F.lit(None).alias(n) for n in table.row_names if n not in frame.columns])
    tables.upsert(spark, where(cfg), table, frame, run_id="planted")


def _plant(spark, cfg, pairs, verdicts=()):
    rows = [
        {"question_id": qid, "seed_id": f"s{qid[0]}", "topic": "cards", "in_scope": True, "question": q}
        | {"answer": f"An answer to {q}", "reasoning": "r"}
        for qid, q in pairs
    ]
    _write(spark, cfg, responses.TABLE, rows)
    if verdicts:
        judged = [
            {"question_id": q, "min_score": score, "keep": keep, "drop_reason": reason, "model": "judge-m"}
            for q, score, keep, reason in verdicts
        ]
        _write(spark, cfg, judge.TABLE, judged)


def _verdicts(spark, cfg) -> dict:
    return {r.question_id: r for r in tables.read(spark, where(cfg), dedup.TABLE).collect()}


def test_planted_duplicates_are_dropped_and_controls_kept(spark, cfg):
    """At the default settings (NearDedup's own, whatever the sample config says)."""
    cfg = cfg.model_copy(update={"quality": cfg.quality.model_copy(update={"dedup": dedup.DedupConfig()})})
    near = [pair for group in NEAR for pair in group]
    planted = EXACT + near + CONTROLS + OTHERS
    _plant(spark, cfg, planted)
    result = dedup.run(context(cfg))
    got = _verdicts(spark, cfg)
    assert set(got) == {q for q, _ in planted}  # every answered pair has its row
    assert [got[q].drop_reason for q, _ in EXACT] == [None, "exact_duplicate", "exact_duplicate"]
    assert len({got[q].exact_group for q, _ in EXACT}) == 1 and got["e1"].exact_group is not None
    for group in NEAR:
        (best, _), *rest = group
        assert got[best].keep and got[best].near_group is not None, group
        assert all(
            got[q].drop_reason == "near_duplicate" and got[q].near_group == got[best].near_group for q, _ in rest
        )
        assert all(got[q].near_similarity >= dedup.NearDedup().threshold for q, _ in group)
    assert all(got[q].keep and got[q].near_group is None for q, _ in CONTROLS + OTHERS)
    assert result.metrics["kept"] == len(planted) - 2 - 4
    assert result.metrics["dropped"] == {"exact_duplicate": 2, "near_duplicate": 4}
    # Format takes only the kept pairs.
    chat_jsonl.run(context(cfg))
    examples = {r.question_id for r in tables.read(spark, where(cfg), chat_jsonl.TABLE).collect()}
    assert examples == {q for q, r in got.items() if r.keep}


def test_a_group_keeps_its_best_judged_pair_and_earlier_drops_keep_their_reason(spark, cfg):
    # e1 failed the judge; of e2 and e3, e3 was judged better: e3 stays, although e2 has the lower id.
    verdicts = [("e1", 1, False, "judge:scope"), ("e2", 2, True, None), ("e3", 3, True, None)]
    _plant(spark, cfg, EXACT, verdicts)
    dedup.run(context(cfg))
    got = _verdicts(spark, cfg)
    assert {q: got[q].drop_reason for q, _ in EXACT} == {"e1": "judge:scope", "e2": "exact_duplicate", "e3": None}
    assert got["e3"].judge_min_score == 3 and got["e3"].judge_model == "judge-m"


def test_dedup_can_be_turned_off(spark, cfg):
    cfg = cfg.model_copy(
        update={"quality": cfg.quality.model_copy(update={"dedup": dedup.DedupConfig.model_validate(
            {"exact": {"enabled": False}, "near": {"enabled": False}})})}
    )  # fmt: skip
    _plant(spark, cfg, EXACT)
    assert dedup.run(context(cfg)).metrics["dropped"] == {}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("How do I add a driver?", "How can I add a driver?", True),
        ("How do I add a driver?", "How do I remove a driver?", False),
        ("Insure my car", "Insure my motorbike", False),
        ("My cards' limits", "my card limit", True),
        ("Why can't I pay?", "Why can I not pay?", True),
        ("Why cannot I pay online?", "Why can I pay online?", False),  # "cannot" is a negation too
        ("Why cannot I pay online?", "Why can't I pay online?", True),
        ("Why won\u2019t it pay?", "Why will it not pay?", True),
        ("A claim with injuries", "A claim with no injuries", False),
    ],
)
def test_content_words(a, b, same):
    assert (duplicates.content_words(a) == duplicates.content_words(b)) is same


def test_negations_and_a_swapped_object_are_not_near_duplicates_at_the_default_threshold():
    """The Jaccard figures behind the default: one added word is a duplicate, one swapped word or a negation is not."""
    threshold = dedup.NearDedup().threshold

    def jaccard(a: str, b: str) -> float:
        x, y = set(duplicates.content_words(a)), set(duplicates.content_words(b))
        return len(x & y) / len(x | y)

    controls = dict(CONTROLS)
    assert jaccard(controls["c8"], controls["c9"]) == 0.75 < threshold  # car / motorbike, 7 content words
    assert jaccard(controls["c14"], controls["c15"]) == 0.75 < threshold
    assert jaccard(controls["c7"], controls["c9"]) == 0.875 >= threshold  # alike, but for the negation ...
    assert duplicates.negations(duplicates.content_words(controls["c7"])) == "no"  # ... which differs
    assert duplicates.negations(duplicates.content_words(controls["c9"])) == ""
    assert jaccard(*[q for _, q in NEAR[2]]) >= threshold  # one added word to five


def test_semantic_duplicates_by_embeddings_within_a_topic(spark, cfg, teacher_server):
    """The stand-in embeds a text as its words: same words in another order are one question to it, as a
    paraphrase is to a real embedding model; different words are not."""
    teacher_server.reset()
    semantic = {"enabled": True, "threshold": 0.95}
    settings = dedup.DedupConfig.model_validate({"near": {"enabled": False}, "semantic": semantic})
    cfg = with_endpoint(cfg, "embeddings", base_url=teacher_server.base_url, model="embed")
    cfg = cfg.model_copy(update={"quality": cfg.quality.model_copy(update={"dedup": settings})})
    # Not the negation controls: to a bag of words, "with" / "with no injuries" are twins (a real model tells them apart).
    controls = CONTROLS[:6]
    planted = [("s1", "Can I freeze my card from the app?"), ("s2", "From the app, can I freeze my card?")] + controls
    _plant(spark, cfg, planted)
    result = dedup.run(context(cfg))
    got = _verdicts(spark, cfg)
    assert got["s1"].keep and got["s2"].drop_reason == "semantic_duplicate"
    assert got["s1"].semantic_group == got["s2"].semantic_group and got["s2"].semantic_similarity > 0.95
    assert all(got[q].keep and got[q].semantic_group is None for q, _ in controls)
    assert result.metrics["dropped"] == {"semantic_duplicate": 1} and teacher_server.stats.requests >= 1


def test_the_packaged_embedding_model_serves_real_embeddings(tmp_path):
    """The embedded default: all-MiniLM-L6-v2 from PyPI, unpacked once, behind /v1/embeddings here."""
    from lakesynth import llm
    from lakesynth.config import EndpointSettings

    teacher = EndpointSettings(model="all-MiniLM-L6-v2", model_cache=str(tmp_path / "cache"), timeout_s=60)
    texts = ["How do I block my card?", "How can I freeze my bank card?", "What is today's mortgage rate?"]
    with llm.open_endpoint(teacher, embeddings=True) as endpoint:
        vectors = llm.embed(endpoint, teacher, texts, batch=2)
    assert vectors.shape == (3, 384)
    assert abs(float(vectors[0] @ vectors[0]) - 1) < 1e-4  # unit vectors
    assert float(vectors[0] @ vectors[1]) > 0.6 > float(vectors[0] @ vectors[2])  # a paraphrase is closer


def test_a_pair_the_relevance_check_dropped_keeps_that_reason_and_is_no_keeper(spark, cfg):
    from lakesynth.quality import relevance

    _plant(spark, cfg, EXACT)
    low = {"question_id": "e1", "score": 0.1, "keep": False, "drop_reason": "relevance", "model": "teacher"}
    _write(spark, cfg, relevance.TABLE, [low])
    dedup.run(context(cfg))
    got = _verdicts(spark, cfg)
    assert {q: got[q].drop_reason for q, _ in EXACT} == {"e1": "relevance", "e2": None, "e3": "exact_duplicate"}
    assert got["e1"].relevance_score == 0.1 and got["e1"].relevance_model == "teacher"
