"""Every example checked against the whole lakehouse, on bring-your-own pairs (exact planted cases): repeats of an
earlier run's examples go with the earlier id, controls that differ in a word that matters stay, examples copied
from an evaluation set go with the item's id, near duplicates share a split, and diversity takes its known values."""

from __future__ import annotations

import itertools
import json
import random
import uuid

import pytest
from conftest import ROOT, context, copy_schema, sample_config, where, with_endpoint, write
from pyspark.sql import functions as F

from lakesynth import pipeline
from lakesynth.config import with_overrides
from lakesynth.core import registry, tables
from lakesynth.core.runtime import Runtime
from lakesynth.errors import ConfigError
from lakesynth.qa import format as chat_format
from lakesynth.qa import responses
from lakesynth.quality import diversity, screen, signatures
from lakesynth.quality.diversity import DiversityConfig

STAGES = ["seed", "questions", "responses", "dedup", "screen", "format"]
# Every word of these questions has a bucket of its own in the stand-in's 64-dimensional bag-of-words embeddings,
# so a question with one word of 8 swapped has a cosine of 7/8 with it, below semantic dedup's 0.9.
ACTIONS = ["open", "close", "upgrade", "cancel", "freeze"]
PRODUCTS = ["card", "mortgage", "loan", "isa", "cheque"]
OTHERS = dict(zip(PRODUCTS, ["motorbike", "yacht", "truck", "kayak", "minibus"], strict=True))
PLACES = ["online", "abroad", "by phone", "in branch"]
# Run 1: 100 questions, any two at most 3 of 5 content words alike (Jaccard 0.6, below near dedup's 0.8).
FIRST = [
    {"id": f"r1-{i:03d}", "topic": product, "question": f"How do I quickly {action} my {product} {place}?"}
    for i, (action, product, place) in enumerate(
        (a, p, w) for a in ACTIONS for p in PRODUCTS for w in PLACES
    )
]  # fmt: skip


def _repeat(i: int, q: str) -> str:
    """Run 1's question `q` again: exactly (case, spacing, end punctuation) or nearly (a function word changed, a
    content word added: 4 of 5 alike)."""
    return [q.upper().rstrip("?"), "  " + q.replace(" my ", "  my "), q.replace("How do I", "How can I"),
            q.replace("?", " today?")][i % 4]  # fmt: skip


# Run 2: 30 repeats of run 1's questions, and 30 controls with the object swapped for a word run 1 never used.
REPEATS = [{"id": f"r2-rep-{i:02d}", "topic": p["topic"], "question": _repeat(i, p["question"])}
           for i, p in enumerate(FIRST[::3][:30])]  # fmt: skip
CONTROLS = [
    {"id": f"r2-ctl-{i:02d}", "topic": "new", "question": p["question"].replace(p["topic"], OTHERS[p["topic"]])}
    for i, p in enumerate(FIRST[1::3][:30])
]
VOCABULARY = sorted({f"{c}{v}{d}" for c in "bcdfghklmnprstvz" for v in "aeiou" for d in "lmnrst"})


def _evaluation_set() -> list[dict]:
    """200 items of 18 words each drawn from 480: any two share few words, and no 13 in a row."""
    rng = random.Random(7)
    return [{"item": f"ev-{i:03d}", "prompt": " ".join(rng.sample(VOCABULARY, 18)) + "?"} for i in range(200)]


def _paraphrase(i: int, text: str) -> str:
    """An item copied (with another case), or lightly edited: its end changed (13 words in a row stay), or one word
    in the middle swapped (no 13-gram left; 17 of 19 content words alike)."""
    words = text.rstrip("?").split()
    if i % 3 == 0:
        return text.capitalize()
    if i % 3 == 1:
        return " ".join(words[:-2]) + " please explain?"
    return " ".join(words[:9] + ["quickly"] + words[10:]) + "?"


# Semantic dedup on (within each topic, as by default), on the stand-in's embeddings: the signatures keep each
# example's embedding, which the next run compares.
SEMANTIC = ("quality.dedup.across_runs=true", "quality.dedup.semantic.enabled=true")


def _cfg(warehouse, server, pairs: str, schema: str, *overrides: str):
    return registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [f"warehouse={warehouse}", f"schema={schema}", f"seed.pairs={pairs}", "mlflow.enabled=false",
         f"endpoints.teacher.base_url={server.base_url}", "endpoints.teacher.model=standin",
         f"endpoints.embeddings.base_url={server.base_url}", "endpoints.embeddings.model=standin", *overrides],
    )  # fmt: skip


def _pairs(tmp_path, name: str, rows: list[dict]) -> str:
    return write(
        tmp_path / f"{name}.jsonl", "".join(json.dumps(r | {"answer": f"Answer {r['id']}."}) + "\n" for r in rows)
    )


def _by_source(spark, rt: Runtime, table: str, key: str) -> dict:
    """Rows of a verdict table by the user's pair id."""
    seeds = spark.table(rt.fqn("seed_questions")).select(
        "seed_id", F.get_json_object("metadata", "$.source_id").alias("source")
    )
    asked = spark.table(rt.fqn("synthetic_responses")).select(F.col("question_id").alias(key), "seed_id")
    rows = spark.table(rt.fqn(table)).drop("seed_id").join(asked, key).join(seeds, "seed_id")
    return {r.source: r for r in rows.collect()}


def test_repeats_of_an_earlier_run_and_contaminated_examples_are_dropped(spark, warehouse, teacher_server, tmp_path):
    teacher_server.reset()
    first_schema, second_schema = (f"t_{uuid.uuid4().hex[:10]}" for _ in range(2))
    shared = f"main.{first_schema}.signatures"
    first = _cfg(warehouse, teacher_server, _pairs(tmp_path, "first", FIRST), first_schema, "run_id=run-1",
                 *SEMANTIC)  # fmt: skip
    summary = pipeline.run(first, STAGES, root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    rt1 = Runtime.resolve(first)
    assert spark.table(rt1.fqn("training_chat")).count() == 100
    alike = summary["stages"]["format"]["diversity"]
    assert (alike["texts"], alike["distinct_texts"], alike["topic_coverage"], len(alike["per_topic"])) == (
        100,
        1.0,
        "5/5",
        5,
    )
    signed = spark.table(shared)
    assert (
        signed.count() == 100 and signed.where("split IS NULL OR text_hash IS NULL OR embedding IS NULL").count() == 0
    )
    ids = {r.source: r.question_id for r in _by_source(spark, rt1, "pair_verdicts", "question_id").values()}
    splits = {r.example_id: r.split for r in signed.collect()}

    # A rerun of the same schema (another run id) drops none of its own examples and adds no signature.
    again = pipeline.run(first.model_copy(update={"run_id": "run-1-again"}), ["screen", "format"], root=ROOT)
    assert again["stages"]["screen"]["dropped"] == {}
    assert spark.table(rt1.fqn("training_chat")).count() == 100 and spark.table(shared).count() == 100

    items = _evaluation_set()
    planted = {f"r2-ev-{i:02d}": (items[i * 10]["item"], _paraphrase(i, items[i * 10]["prompt"])) for i in range(20)}
    contaminated = [{"id": k, "topic": "maths", "question": q} for k, (_, q) in planted.items()]
    evaluation = write(tmp_path / "bench_qa.jsonl", "".join(json.dumps(i) + "\n" for i in items))
    second = _cfg(
        warehouse, teacher_server, _pairs(tmp_path, "second", REPEATS + CONTROLS + contaminated), second_schema,
        "run_id=run-2", *SEMANTIC, f"quality.dedup.signatures_table={shared}",
        f"decontamination.sets=[{{path: '{evaluation}', text: prompt, id: item}}]",
    )  # fmt: skip
    summary = pipeline.run(second, STAGES, root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    rt2 = Runtime.resolve(second)
    got = _by_source(spark, rt2, "screen_verdicts", "question_id")
    for i, (repeat, original) in enumerate(zip(REPEATS, FIRST[::3], strict=False)):
        row = got[repeat["id"]]
        assert (row.drop_reason, row.earlier_id, row.earlier_run) == ("dedup:earlier_run", ids[original["id"]], "run-1")
        assert row.earlier_match == ("exact" if i % 4 < 2 else "near")  # as _repeat made it
    assert all(got[c["id"]].keep for c in CONTROLS), [got[c["id"]].reasoning for c in CONTROLS if not got[c["id"]].keep]
    for key, (item, _) in planted.items():
        assert (got[key].drop_reason, got[key].contaminated_item) == ("contaminated:bench_qa", item), got[key]
    report = spark.table(rt2.fqn("contamination_report")).collect()
    assert {r.item_id for r in report} == {item for item, _ in planted.values()}  # none of the 180 others
    assert summary["stages"]["screen"]["contamination"] == {"bench_qa": {"items": 200, "items_hit": 20}}
    chat = {r.question_id for r in spark.table(rt2.fqn("training_chat")).collect()}
    assert chat == {r.question_id for k, r in got.items() if k.startswith("r2-ctl")}
    # Run 2's examples joined the shared table; run 1's kept their splits.
    after = {r.example_id: r.split for r in spark.table(shared).where("run_id = 'run-1'").collect()}
    assert after == splits and spark.table(shared).count() == 130


def _answered(spark, cfg, rows: list[tuple[str, str, str]]) -> None:
    """Planted answered questions (id, topic, question), as the responses stage writes them."""
    frame = spark.createDataFrame(
        [
            {"question_id": q, "seed_id": f"s-{q}", "topic": t, "question": text, "answer": f"A: {text}"}
            for q, t, text in rows
        ]
    )
    frame = frame.select(
        *frame.columns, *[F.lit(None).alias(n) for n in responses.TABLE.row_names if n not in frame.columns]
    )
    tables.upsert(spark, where(cfg), responses.TABLE, frame, run_id="planted")


def test_near_duplicates_never_straddle_splits_and_no_example_moves(spark, cfg):
    """Format run twice on the same schema: the second run's paraphrases of the first run's examples take their
    splits, which never move, and paraphrase groups inside the run share one split."""
    first = [(p["id"], p["topic"], p["question"]) for p in FIRST[:60]]
    _answered(spark, cfg, first)
    result = chat_format.run(context(cfg.model_copy(update={"run_id": "f1"})))
    assert result.metrics["signatures_added"] == 60
    before = {r.example_id: r.split for r in tables.read(spark, where(cfg), chat_format.TABLE).collect()}
    assert set(before.values()) == {"train", "val"}
    echoes = [(f"echo-{q}", t, text.replace("?", " today?")) for q, t, text in first[:20]]  # 4 of 5 words alike
    kinds = itertools.product(("open", "close", "move", "merge"), ("joint", "student", "junior"))
    groups = [
        [(f"g{i}-{j}", "fees", v) for j, v in enumerate((
            f"What is the fee to {a} a {p} account?", f"What's the fee to {a} a {p} account?",
            f"What is the fee to {a} a {p} account today?"))]
        for i, (a, p) in enumerate(kinds)
    ]  # fmt: skip
    _answered(spark, cfg, echoes + [row for group in groups for row in group])
    result = chat_format.run(context(cfg.model_copy(update={"run_id": "f2"})))
    after = {r.example_id: r.split for r in tables.read(spark, where(cfg), chat_format.TABLE).collect()}
    assert {q: after[q] for q in before} == before  # no earlier example changed split
    assert all(after[f"echo-{q}"] == before[q] for q, _, _ in first[:20])
    assert all(len({after[q] for q, _, _ in group}) == 1 for group in groups)
    assert len({after[group[0][0]] for group in groups}) == 2  # the groups themselves are still spread
    assert result.metrics["leakage_before"] > 0 and result.metrics["leakage_after"] == 0
    signed = {r.example_id: r.split for r in signatures.read(context(cfg), cfg.quality.dedup).collect()}
    assert signed == after and result.metrics["signatures_added"] == len(after) - 60


def test_diversity_figures_take_their_bounds(spark, cfg, teacher_server):
    """Copies of one question give the least diversity (distinct shares 1/k, similarity 1); questions with no word
    in common give the most (shares 1, similarity 0, on the stand-in's bag-of-words embeddings)."""
    cfg = with_endpoint(cfg, "embeddings", base_url=teacher_server.base_url, model="standin")
    cfg = cfg.model_copy(
        update={"quality": cfg.quality.model_copy(update={"diversity": DiversityConfig(embeddings=True)})}
    )
    same = [(f"s{i}", "same", "How do I block my card?") for i in range(4)]
    words = ["mortgage rates", "pension transfer", "overdraft limit", "isa allowance"]
    apart = [(f"d{i}", "apart", w) for i, w in enumerate(words)]  # 8 words, 8 buckets of the stand-in
    frame = spark.createDataFrame([(t, q) for _, t, q in same + apart], "topic string, text string")
    asked = spark.createDataFrame([("same",), ("apart",), ("absent",)], "topic string")
    got = diversity.figures(diversity.measured(context(cfg), frame, by="topic", text="text", asked=asked, name="t"))
    assert got["per_topic"]["same"] == {"texts": 4, "distinct_texts": 0.25, "distinct_2": 0.25, "mean_similarity": 1.0}
    assert got["per_topic"]["apart"] == {"texts": 4, "distinct_texts": 1.0, "distinct_2": 1.0, "mean_similarity": 0.0}
    assert got["texts"] == 8 and got["topic_coverage"] == "2/3"


@pytest.fixture(scope="module")
def checked_calls(spark, warehouse):
    """The sample's tool calls through the checks (the semantic judge off), once for the module."""
    cfg = sample_config(warehouse)
    cfg = cfg.model_copy(
        update={
            "tools": cfg.tools.model_copy(update={"semantic": cfg.tools.semantic.model_copy(update={"enabled": False})})
        }
    )
    stages = ["tools", "calls", "call_format", "call_execution", "call_semantic", "call_verdicts"]
    pipeline.run(cfg, stages, job="lakesynth_tools", root=ROOT)
    return cfg


def test_tool_queries_are_screened_and_signed(spark, warehouse, checked_calls, cfg, tmp_path):
    """The tools job: a query that repeats an evaluation item is dropped before tool format, the kept ones are
    signed, and another schema sharing the signatures drops them all as repeats of that earlier run."""
    first = copy_schema(
        spark, checked_calls, cfg.model_copy(update={"tools": checked_calls.tools, "run_id": "tools-1"})
    )
    kept = spark.table(where(first).fqn("call_verdicts")).where("keep").orderBy("call_id").collect()
    assert len(kept) >= 3
    evaluation = write(tmp_path / "calls_eval.jsonl", json.dumps({"text": kept[0].query}) + "\n")
    with_set = f"decontamination.sets=[{{path: '{evaluation}', text: text}}]"
    summary = pipeline.run(
        with_overrides(first, [with_set]), ["call_screen", "tool_format"], job="lakesynth_tools", root=ROOT
    )
    assert summary["stages"]["call_screen"]["dropped"] == {"contaminated:calls_eval": 1}
    verdict = spark.table(where(first).fqn("call_screen_verdicts")).where(f"call_id = '{kept[0].call_id}'").first()
    assert verdict.contaminated_item == "1" and not verdict.keep
    examples = {r.example_id for r in spark.table(where(first).fqn("training_tools")).collect()}
    assert kept[0].call_id not in examples and examples <= {r.call_id for r in kept}
    signed = spark.table(where(first).fqn("signatures")).collect()
    assert {r.example_id for r in signed} == examples and {r.job for r in signed} == {"lakesynth_tools"}

    second = sample_config(warehouse).model_copy(update={"tools": checked_calls.tools, "run_id": "tools-2"})
    second = copy_schema(spark, checked_calls, second)
    shared = f"quality.dedup.signatures_table=main.{first.schema_}.signatures"
    summary = pipeline.run(
        with_overrides(second, ["quality.dedup.across_runs=true", shared]),
        ["call_screen"],
        job="lakesynth_tools",
        root=ROOT,
    )
    repeats = (
        spark.table(where(second).fqn("call_screen_verdicts")).where("drop_reason = 'dedup:earlier_run'").collect()
    )
    assert {(r.call_id, r.earlier_id, r.earlier_run) for r in repeats} == {(e, e, "tools-1") for e in examples}


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "absent.jsonl", r"decontamination.sets\[0\] \(.*absent.jsonl\): cannot read it"),
        ('{"prompt": "What is 2 + 2?"}\n', "no_text.jsonl", r"no column 'question' \(columns: prompt\)"),
        ('{"question": "What is 2 + 2?"}\n{"question": " "}\n', "blank.jsonl", r"item 2: column 'question' is empty"),
        ("a,b\n", "items.csv", r"expected a .jsonl, .json or .parquet file"),
    ],
)
def test_a_bad_evaluation_set_is_named_and_nothing_is_written(spark, cfg, tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        write(path, content)
    _answered(spark, cfg, [("q1", "cards", "How do I block my card?")])
    bad = with_overrides(cfg, [f"decontamination.sets=[{{path: '{path}'}}]"])
    with pytest.raises(ConfigError, match=message):
        screen.run(context(bad))
    assert not spark.catalog.tableExists(where(cfg).fqn("screen_verdicts"))
