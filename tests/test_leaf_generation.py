"""Generation per taxonomy leaf, its grounding check and the per-leaf top-up, on the stand-in teacher: every leaf
reaches taxonomy.per_leaf kept pairs, knowledge pairs carry their chunk, and a rerun pays nothing."""

from __future__ import annotations

from conftest import ROOT, context, where

from lakesynth.core import tables
from lakesynth.taxonomy import documents, grounding, leaf_generation, leaf_topup, taxonomy

FIXTURE = ROOT / "tests" / "fixtures" / "taxonomy"
DOCS = ROOT / "tests" / "fixtures" / "taxonomy_docs"
KNOWLEDGE = "knowledge/science/biology/lichens"
FREEFORM = "compositional_skills/writing/freeform/plain_language"
GROUNDED = "compositional_skills/grounded/tables/bus_timetable"
STAGES = (documents, taxonomy, leaf_generation, grounding, leaf_topup)


def _cfg(cfg, **changes):
    t = {"path": str(FIXTURE), "per_leaf": 3, "max_rounds": 10, **changes}
    return cfg.model_copy(
        update={
            "taxonomy": cfg.taxonomy.model_copy(update=t),
            "documents": cfg.documents.model_copy(update={"path": str(DOCS), "chunk_words": 80, "overlap_words": 8}),
        }
    )


def _run(ctx) -> dict:
    return {stage.STAGE.name: stage.STAGE.run(ctx) for stage in STAGES}


def test_every_leaf_reaches_per_leaf_kept_pairs_grounded_in_its_chunks_and_a_rerun_pays_nothing(
    spark, llm_cfg, teacher_server
):
    cfg = _cfg(llm_cfg)
    ctx = context(cfg)
    results = _run(ctx)
    generated = results["leaf_generation"]
    # Round 0: per_leaf and its spare share (0.5 of 3, rounded up) per leaf, one run of the loop per mode.
    assert generated.metrics["requests_per_mode"] == {"freeform": 5, "grounded": 5, "knowledge": 5}
    assert generated.rows_out == 15 and generated.errors == 0

    topup = results["leaf_topup"].metrics
    before, after = topup["kept_per_leaf_before"], topup["kept_per_leaf_after"]
    assert set(before) == set(after) == {KNOWLEDGE, FREEFORM, GROUNDED}
    assert topup["leaves_short_before"] >= 1 and topup["rounds"] >= 1  # the stand-in's verdicts drop some
    assert all(n >= 3 for n in after.values()) and topup["leaves_short"] == 0 and topup["short"] == {}

    rt = where(cfg)
    pairs = [r.asDict() for r in tables.read(spark, rt, leaf_generation.TABLE).collect()]
    assert all(p["error"] is None and p["question"] and p["answer"] for p in pairs)
    assert max(p["round"] for p in pairs) >= 1  # top-up rounds added requests under the next round number
    assert len({(p["leaf"], p["round"], p["index"]) for p in pairs}) == len(pairs)
    # Every knowledge pair's context is the text of a chunk of its leaf's document; skills: a generated context
    # for the grounded one, none for the freeform one.
    chunks = {r.chunk_id: r for r in tables.read(spark, rt, documents.TABLE).collect()}
    for p in pairs:
        if p["leaf"] == KNOWLEDGE:
            assert p["kind"] == "knowledge" and p["grounded"] is True
            assert chunks[p["chunk_id"]].source == "lichens.md" and p["context"] == chunks[p["chunk_id"]].text
        else:
            assert p["chunk_id"] is None and p["kind"] == "skill"
            assert (p["context"] is not None) == (p["leaf"] == GROUNDED) == p["grounded"]
    knowledge = [p for p in pairs if p["leaf"] == KNOWLEDGE]
    assert len({p["chunk_id"] for p in knowledge}) == min(len(knowledge), len(chunks))  # round-robin

    # Each pair's verdict: the reasoning, the scores of the criteria that apply to it, and why it was dropped.
    verdicts = {r.pair_id: r for r in tables.read(spark, rt, grounding.TABLE).collect()}
    assert set(verdicts) == {p["pair_id"] for p in pairs}
    for p in pairs:
        v = verdicts[p["pair_id"]]
        assert v.reasoning and v.model == "standin" and v.prompt_version and v.leaf == p["leaf"]
        applies = grounding.APPLIES[{KNOWLEDGE: "knowledge", GROUNDED: "grounded", FREEFORM: "freeform"}[p["leaf"]]]
        scores = {name: getattr(v, name) for name in grounding.CRITERIA}
        assert all((scores[name] in (1, 2, 3)) == (name in applies) for name in grounding.CRITERIA)
        failed = [name for name in applies if scores[name] < 2]
        assert v.keep == (not failed) and v.drop_reason == (f"grounding:{failed[0]}" if failed else None)
    assert any(not v.keep for v in verdicts.values())
    kept = {leaf: sum(verdicts[p["pair_id"]].keep for p in pairs if p["leaf"] == leaf) for leaf in after}
    assert kept == after
    counts = results["grounding"].metrics
    assert counts["kept"] + sum(counts["dropped"].values()) == 15  # the plain run's verdicts, before the top-up

    # A rerun pays nothing: the plan's requests, the top-up rounds' and every verdict are already there.
    paid = teacher_server.stats.completions
    again = _run(ctx)
    assert teacher_server.stats.completions == paid
    assert again["leaf_generation"].rows_out == 0 and again["leaf_generation"].metrics["deleted"] == 0
    assert again["leaf_topup"].metrics["rounds"] == 0 and again["leaf_topup"].metrics["kept_per_leaf_before"] == after

    # A stricter min_score applies to every kept score at once, with no call paid again.
    strict = _cfg(llm_cfg)
    strict = strict.model_copy(
        update={
            "taxonomy": strict.taxonomy.model_copy(
                update={"grounding": strict.taxonomy.grounding.model_copy(update={"min_score": 3})}
            )
        }
    )
    grounding.run(context(strict))
    assert teacher_server.stats.completions == paid
    for v in tables.read(spark, rt, grounding.TABLE).collect():
        assert v.keep == all(getattr(v, name) in (3, None) for name in grounding.CRITERIA)

    # A smaller per_leaf plans fewer round-0 requests: the ones past it go, the top-up rounds' stay, nothing is paid.
    smaller = context(_cfg(llm_cfg, per_leaf=2))
    result = leaf_generation.run(smaller)
    assert teacher_server.stats.completions == paid and result.metrics["deleted"] == 3 * 2
    left = [r.asDict() for r in tables.read(spark, rt, leaf_generation.TABLE).collect()]
    assert {p["index"] for p in left if p["round"] == 0} == {0, 1, 2}
    assert {p["pair_id"] for p in left if p["round"] > 0} == {p["pair_id"] for p in pairs if p["round"] > 0}


def test_a_topup_round_asks_only_the_short_leaves_under_their_next_round(spark, llm_cfg, teacher_server):
    cfg = _cfg(llm_cfg, per_leaf=1)
    ctx = context(cfg)
    for stage in (documents, taxonomy, leaf_generation):
        stage.STAGE.run(ctx)
    result = leaf_generation.STAGE.execute(ctx, {KNOWLEDGE: 2})
    assert result.metrics["requests_per_mode"] == {"freeform": 0, "grounded": 0, "knowledge": 3}
    assert result.metrics["topup_rounds"] == [1]
    rows = [r.asDict() for r in tables.read(spark, where(cfg), leaf_generation.TABLE).collect()]
    topped = sorted((p["index"], p["chunk_id"]) for p in rows if p["round"] == 1)
    assert [i for i, _ in topped] == [0, 1, 2] and all(p["leaf"] == KNOWLEDGE for p in rows if p["round"] == 1)
    first = [p["chunk_id"] for p in sorted(rows, key=lambda p: p["index"]) if p["leaf"] == KNOWLEDGE and not p["round"]]
    assert not set(first) & {c for _, c in topped}  # the round-robin goes on past the chunks round 0 took
    # A plain run afterwards keeps the round's requests and pays nothing.
    paid = teacher_server.stats.completions
    again = leaf_generation.run(ctx)
    assert again.metrics["deleted"] == 0 and teacher_server.stats.completions == paid


def test_without_a_taxonomy_the_three_stages_succeed_disabled(llm_cfg, teacher_server):
    ctx = context(llm_cfg)
    for stage in (leaf_generation, grounding, leaf_topup):  # the runner's call: the stage's switch, then its work
        assert stage.STAGE.execute(ctx).metrics == {
            "disabled": "no taxonomy: pass --taxonomy DIR (taxonomy.path) or a template"
        }
    assert teacher_server.stats.requests == 0
