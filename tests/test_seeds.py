"""Seed ingest: the sample, every validation error, idempotence, literal text."""

from __future__ import annotations

import json

import pytest
from chispa import assert_df_equality
from conftest import context, where, write

from lakesynth.core import tables
from lakesynth.errors import SeedError
from lakesynth.qa import seed as seeds


def _ingest(spark, cfg, path):
    cfg = cfg.model_copy(update={"seed": cfg.seed.model_copy(update={"path": path})})
    return seeds.run(context(cfg)), cfg


def test_sample_seeds_land_in_delta(spark, cfg):
    result = seeds.run(context(cfg))
    df = tables.read(spark, where(cfg), seeds.TABLE)
    assert result.rows_in == result.rows_out == df.count() >= 20
    topics = {r.topic for r in df.select("topic").distinct().collect()}
    assert {"cards", "fraud", "investment advice", "tax advice", "legal advice"} <= topics
    scope = {r.topic: r.in_scope for r in df.select("topic", "in_scope").distinct().collect()}
    assert scope["cards"] is True and scope["investment advice"] is False
    assert (
        df.where("run_id = 'test-run' AND created_at IS NOT NULL AND source LIKE 'seeds.csv#%'").count() == df.count()
    )


def test_reingest_adds_nothing(spark, cfg):
    first = seeds.run(context(cfg))
    again = seeds.run(context(cfg))
    assert first.rows_out > 0 and again.rows_out == 0
    assert tables.count(spark, where(cfg), seeds.TABLE) == first.rows_out


def test_seed_id_is_stable_content_hash(spark, cfg, tmp_path):
    a = write(tmp_path / "a.csv", "topic,question,in_scope\ncards,Lost card?,yes\n")
    b = write(tmp_path / "b.jsonl", json.dumps({"topic": "cards", "question": "Lost card?", "in_scope": True}) + "\n")
    _ingest(spark, cfg, a)
    result, _ = _ingest(spark, cfg, b)
    assert result.rows_out == 0


def test_text_survives_literally(spark, cfg, tmp_path):
    tricky = [
        "What does {{ balance }} mean in {% raw %} my statement?",
        'She said "hi", then {braces} and \\backslashes\\',
        "Line one\nline two",
        "¿Dónde está mi tarjeta? 我的卡丢了 — карта ❤",
    ]
    lines = [json.dumps({"topic": "odd", "question": q, "in_scope": "yes", "metadata": {"k": "{x}"}}) for q in tricky]
    path = write(tmp_path / "odd.jsonl", "\n".join(lines) + "\n")
    _, cfg = _ingest(spark, cfg, path)
    got = {r.question for r in tables.read(spark, where(cfg), seeds.TABLE).collect()}
    assert got == set(tricky)


def test_csv_quotes_and_newlines(spark, cfg, tmp_path):
    path = write(tmp_path / "q.csv", 'topic,question,in_scope\ncards,"Two\nlines, ""quoted"" {{x}}",no\n')
    _, cfg = _ingest(spark, cfg, path)
    (row,) = tables.read(spark, where(cfg), seeds.TABLE).collect()
    assert row.question == 'Two\nlines, "quoted" {{x}}' and row.in_scope is False


BAD_FILES = {
    "missing_column.csv": ("topic,question\ncards,Lost card?\n", r"missing required column\(s\) in_scope"),
    "empty_question.csv": (
        "topic,question,in_scope\ncards,Lost?,yes\ncards,,yes\ncards,  ,no\n",
        r"empty question: row\(s\) 2, 3",
    ),
    "whitespace_question.csv": (
        'topic,question,in_scope\ncards,Lost?,yes\ncards,"\t ",yes\ncards," \n\t",no\n',
        r"empty question: row\(s\) 2, 3",
    ),
    "more_fields_than_header.csv": (
        "topic,question,in_scope\ncards,Lost?,yes,extra\ncards,Stolen?,no,more\n",
        r"row\(s\) 1, 2 have more fields than the header's 3 \(topic, question, in_scope\)",
    ),
    "bad_scope.csv": (
        "topic,question,in_scope\ncards,A?,yes\ncards,B?,maybe\n",
        r"in_scope is not true/false.*row\(s\) 2",
    ),
    "empty.csv": ("", r"the file is empty"),
    "blank.jsonl": ("\n  \n", r"the file is empty"),
    "header_only.csv": ("topic,question,in_scope\n", r"no seed rows"),
    "json_named_csv.csv": ('{"topic": "cards"}\n', r"looks like JSON, not CSV"),
    "csv_named_jsonl.jsonl": ("topic,question,in_scope\ncards,A?,yes\n", r"not JSON Lines: line\(s\) 1, 2"),
    "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", r"not a UTF-8 text file|binary"),
    "duplicates.csv": (
        "topic,question,in_scope\ncards,A?,yes\ncards,B?,yes\ncards,A?,yes\n",
        r"duplicate rows.*row\(s\) 1, 3",
    ),
    "unknown_column.csv": ("topic,question,in_scope,colour\ncards,A?,yes,red\n", r"unknown column\(s\) colour"),
    "seeds.parquet": ("x", r"unsupported seed file type '.parquet'"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_seed_file_names_file_and_rows_and_writes_nothing(spark, cfg, tmp_path, name):
    seeds.run(context(cfg))  # a table with the sample already in it must stay unchanged
    before = tables.read(spark, where(cfg), seeds.TABLE)
    before = spark.createDataFrame(before.collect(), before.schema)  # the rows now, not the table later
    content, pattern = BAD_FILES[name]
    path = write(tmp_path / name, content)
    with pytest.raises(SeedError, match=pattern) as info:
        _ingest(spark, cfg, path)
    assert name in str(info.value)
    assert_df_equality(tables.read(spark, where(cfg), seeds.TABLE), before, ignore_row_order=True)


def test_missing_file(spark, cfg, tmp_path):
    with pytest.raises(SeedError, match="nope.csv: seed file not found"):
        _ingest(spark, cfg, str(tmp_path / "nope.csv"))


def test_seeds_from_table(spark, cfg):
    seeds.run(context(cfg))
    source = cfg.fqn(seeds.TABLE.name)
    other = cfg.model_copy(update={"schema_": cfg.schema_ + "_copy"})
    result, other = _ingest(spark, other, f"table:{source}")
    assert result.rows_out == tables.count(spark, where(cfg), seeds.TABLE)
    cols = ["seed_id", "topic", "question", "in_scope"]
    assert_df_equality(
        tables.read(spark, where(other), seeds.TABLE).select(cols),
        tables.read(spark, where(cfg), seeds.TABLE).select(cols),
        ignore_row_order=True,
    )


def test_find_problems_is_a_pure_transform(spark):
    raw = spark.createDataFrame(
        [(1, "t", "q", "yes", None, None), (2, "t", "", "no", None, None), (3, "t", "q", "perhaps", None, None)],
        seeds.RAW_SCHEMA,
    )
    expected = [
        (1, "duplicate rows (same topic and question)"),
        (2, "empty question"),
        (3, "duplicate rows (same topic and question)"),
        (3, "in_scope is not true/false/yes/no/1/0"),
    ]
    assert_df_equality(
        seeds.find_problems(raw).select("_row", "problem"),
        spark.createDataFrame(expected, "_row bigint, problem string"),
        ignore_row_order=True,
        ignore_nullable=True,
    )
