"""Format stage: chat rules, exclusions, a reproducible split per example, one JSONL file per split."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from conftest import context, copy_schema, run_once, where, with_endpoint

from lakesynth.core import tables
from lakesynth.qa import format as chat_jsonl
from lakesynth.qa import questions, responses
from lakesynth.qa import seed as seeds
from lakesynth.training.checks import chat_violation

U, A, SYS = (
    {"role": "user", "content": "Hi?"},
    {"role": "assistant", "content": "Hello."},
    {"role": "system", "content": "Be nice."},
)


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([U, A], None),
        ([SYS, U, A], None),
        ([SYS, U, A, U, A], None),
        ([], "no messages"),
        ([U, SYS, A], "system message not first"),
        ([A, U], "roles do not alternate"),
        ([U, U, A], "roles do not alternate"),
        ([SYS, U], "does not end with an assistant message"),
        ([U, A, U], "does not end with an assistant message"),
        ([U, {"role": "assistant", "content": "  "}], "empty content"),
        ([U, {"role": "tool", "content": "x"}], "unknown role"),
        ([U, {"role": "assistant", "content": "ok <|im_end|>"}], "chat-template tokens"),
        ([U, {"role": "assistant", "content": "x" * 400}], "longer than 50 tokens"),
    ],
)
def test_chat_rules(messages, problem):
    got = chat_violation(messages, max_tokens=50)
    assert got == problem if problem is None else problem in got


@pytest.fixture(scope="module")
def answered(spark, warehouse, teacher_server):
    """Seed, questions and responses, run once for the module; each test formats a copy."""
    return run_once(warehouse, teacher_server, seeds, questions, responses)


def test_format_writes_valid_stratified_jsonl(spark, llm_cfg, teacher_server):
    cfg = with_endpoint(llm_cfg, max_retries=0)
    seeds.run(context(cfg))
    questions.run(context(cfg))
    teacher_server.reset(fault_rate=0.1, faults=("500",), seed=2)
    responses.run(context(cfg))
    answered = tables.read(spark, where(cfg), responses.TABLE).where("error IS NULL").count()
    failed = tables.read(spark, where(cfg), responses.TABLE).where("error IS NOT NULL").count()
    assert failed > 0
    result = chat_jsonl.run(context(cfg))
    chat = tables.read(spark, where(cfg), chat_jsonl.TABLE)
    assert chat.count() == result.rows_out == answered and result.metrics["excluded_unanswered"] == failed
    assert set(result.files) == {"train_jsonl", "val_jsonl"}
    lines = {}
    for split in ("train", "val"):
        with open(result.files[f"{split}_jsonl"], encoding="utf-8") as fh:
            lines[split] = [json.loads(line) for line in fh]
        for example in lines[split]:
            assert set(example) == {"messages"}
            assert chat_violation(example["messages"], 2048) is None
            assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    assert len(lines["train"]) + len(lines["val"]) == answered
    assert lines["train"] and lines["val"]
    before = {r.example_id: r.split for r in chat.collect()}
    chat_jsonl.run(context(cfg))
    assert {r.example_id: r.split for r in tables.read(spark, where(cfg), chat_jsonl.TABLE).collect()} == before


def test_too_long_examples_are_counted_not_written(spark, answered, llm_cfg):
    copy_schema(spark, answered, llm_cfg)
    cfg = llm_cfg.model_copy(update={"format": llm_cfg.format.model_copy(update={"max_example_tokens": 16})})
    result = chat_jsonl.run(context(cfg))
    assert result.rows_out == 0 and result.errors == tables.count(spark, where(cfg), responses.TABLE)
    assert list(result.metrics["violations"]) == ["longer than 16 tokens (estimated)"]


def test_the_files_go_to_the_volume_the_job_names(spark, answered, llm_cfg):
    cfg = copy_schema(spark, answered, llm_cfg.model_copy(update={"volume": "other"}))
    result = chat_jsonl.run(context(cfg))
    folder = Path(cfg.warehouse) / "main" / cfg.schema_ / "other" / "training_chat"
    assert result.files == {"train_jsonl": str(folder / "train.jsonl"), "val_jsonl": str(folder / "val.jsonl")}
    assert (folder / "train.jsonl").stat().st_size > 0


def test_the_split_is_drawn_per_example_and_never_moves(spark):
    def frame(rows):
        return spark.createDataFrame(rows, "example_id string, topic string, question string")

    rows = [(f"e{i}", ["cards", "tax"][i % 2], f"Question number {i}?") for i in range(2000)]
    split = functools.partial(chat_jsonl.assign_split, by="question", val_fraction=0.2, test_fraction=0.1, seed=7)
    first = {r.example_id: r.split for r in split(frame(rows)).collect()}
    # Each topic gets its share in expectation (binomial, n=1000 per topic: sd 0.013 for val).
    for topic in ("cards", "tax"):
        mine = [first[e] for e, t, _ in rows if t == topic]
        assert abs(mine.count("val") / len(mine) - 0.2) < 0.05 and abs(mine.count("test") / len(mine) - 0.1) < 0.04
    # Adding half as much again, and removing some, moves no example that stays.
    more = rows[100:] + [(f"n{i}", "cards", f"Another question {i}") for i in range(1000)]
    second = {r.example_id: r.split for r in split(frame(more)).collect()}
    assert all(second[e] == first[e] for e, _, _ in rows[100:])
    # The same question, written differently, is in one split only.
    pairs = [(f"How do I block card {i}?", f"  how do I  BLOCK card {i}") for i in range(50)]
    variants = frame([(f"{i}{side}", "x", q) for i, pair in enumerate(pairs) for side, q in zip("ab", pair)])
    drawn = {r.example_id: r.split for r in split(variants).collect()}
    assert all(drawn[f"{i}a"] == drawn[f"{i}b"] for i in range(50)) and len(set(drawn.values())) > 1


def test_a_split_that_drew_nothing_takes_the_nearest_question(spark):
    rows = [(f"e{i}", "cards", f"Question {i}?") for i in range(3)] + [("e9", "cards", "question 0")]
    chat = spark.createDataFrame(rows, "example_id string, topic string, question string")
    split = chat_jsonl.assign_split(chat, by="question", val_fraction=0.01, test_fraction=0.0, seed=7)
    assert {r.split for r in split.collect()} == {"train"}
    filled = {
        r.example_id: r.split
        for r in chat_jsonl.fill_empty_splits(split, val_fraction=0.01, test_fraction=0.0).collect()
    }
    val = {e for e, s in filled.items() if s == "val"}
    assert val and len(val) < 4 and ({"e0", "e9"} <= val or not {"e0", "e9"} & val)  # a question moves whole
