"""Format stage: chat rules, exclusions, stratified reproducible split, one JSONL file per split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import context, where

from lakesynth import chat_jsonl, questions, responses, seeds, tables

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
    got = chat_jsonl.chat_violation(messages, max_tokens=50)
    assert got == problem if problem is None else problem in got


def _pipeline(spark, cfg):
    seeds.run(context(cfg))
    questions.run(context(cfg))
    responses.run(context(cfg))


def test_format_writes_valid_stratified_jsonl(spark, llm_cfg, teacher_server):
    cfg = llm_cfg.model_copy(update={"teacher": llm_cfg.teacher.model_copy(update={"max_retries": 0})})
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
            assert chat_jsonl.chat_violation(example["messages"], 2048) is None
            assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    assert len(lines["train"]) + len(lines["val"]) == answered
    # Each topic keeps its share: validation holds round(n * 0.2) of its n examples, within one.
    for row in chat.groupBy("topic").pivot("split", ["train", "val"]).count().collect():
        n = (row.train or 0) + (row.val or 0)
        assert abs((row.val or 0) - n * cfg.format.val_fraction) <= 1
    before = {r.example_id: r.split for r in chat.collect()}
    chat_jsonl.run(context(cfg))
    assert {r.example_id: r.split for r in tables.read(spark, where(cfg), chat_jsonl.TABLE).collect()} == before


def test_too_long_examples_are_counted_not_written(spark, llm_cfg):
    _pipeline(spark, llm_cfg)
    cfg = llm_cfg.model_copy(update={"format": llm_cfg.format.model_copy(update={"max_tokens": 16})})
    result = chat_jsonl.run(context(cfg))
    assert result.rows_out == 0 and result.errors == tables.count(spark, where(cfg), responses.TABLE)
    assert list(result.metrics["violations"]) == ["longer than 16 tokens (estimated)"]


def test_the_files_go_to_the_volume_the_job_names(spark, llm_cfg):
    cfg = llm_cfg.model_copy(update={"volume": "other"})
    _pipeline(spark, cfg)
    result = chat_jsonl.run(context(cfg))
    folder = Path(cfg.warehouse) / "main" / cfg.schema_ / "other" / "training_chat"
    assert result.files == {"train_jsonl": str(folder / "train.jsonl"), "val_jsonl": str(folder / "val.jsonl")}
    assert (folder / "train.jsonl").stat().st_size > 0
