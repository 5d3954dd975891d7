"""The table layer is the only writer: no other module writes a table or stamps a row's lineage (read from the
source), and its verbs stamp `run_id` and `created_at` and re-apply a threshold to stored scores."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from chispa import assert_df_equality
from conftest import where

from lakesynth.core import tables
from lakesynth.core.tables import INT, S
from lakesynth.errors import TableSchemaError

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lakesynth"
WRITER = PACKAGE / "core" / "tables.py"
WRITES = {"insertInto", "saveAsTable", "writeTo"}  # DataFrameWriter (V1 and V2) calls that write a table
SQL_WRITE = re.compile(r"\b(UPDATE|MERGE INTO|INSERT (INTO|OVERWRITE)|DELETE FROM|TRUNCATE)\b")


def _text(node: ast.AST) -> str | None:
    """A string literal's text, an f-string's with `{}` where a value goes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def bypasses(source: str) -> list[str]:
    """Where `source` writes a table or stamps lineage itself: `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in WRITES | {"current_timestamp"}:
            found.append(f"{node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("alias", "withColumn")
            and node.args
            and _text(node.args[0]) in tables.LINEAGE_NAMES
        ):
            found.append(f"{node.lineno}: {node.func.attr}({_text(node.args[0])!r})")
        elif (text := _text(node)) is not None and SQL_WRITE.search(text):
            found.append(f"{node.lineno}: SQL {SQL_WRITE.search(text).group(0)}")
    return list(dict.fromkeys(found))  # an f-string's text is seen twice: whole, and its literal parts


def test_only_the_table_layer_writes_tables_or_stamps_rows():
    wrong = [
        f"{path.relative_to(PACKAGE)}:{where}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != WRITER
        for where in bypasses(path.read_text(encoding="utf-8"))
    ]
    assert not wrong, wrong


@pytest.mark.parametrize(
    "line",
    [
        'df.write.mode("overwrite").insertInto(fqn)',
        "df.write.saveAsTable(name)",
        'df.withColumn("created_at", F.current_timestamp())',
        'df.select(F.lit(run_id).alias("run_id"))',
        'spark.sql(f"UPDATE {fqn} SET keep = score >= {t}")',
        'spark.sql("MERGE INTO t USING s ON t.k = s.k WHEN MATCHED THEN DELETE")',
    ],
)
def test_the_scan_sees_each_kind_of_bypass(line):
    assert bypasses(line)


ROWS = tables.contract("stamped_rows", [("id", S), ("text", S)], key="id", parent="id")
VERDICTS = tables.verdict(
    "scored_verdicts", [("id", S), ("a", INT), ("b", INT), ("error", S)], judges="stamped_rows", key="id"
)


def _lineage(spark, cfg, table) -> dict:
    """id -> (run_id, created_at) of the rows written."""
    return {r.id: (r.run_id, r.created_at) for r in tables.read(spark, where(cfg), table).collect()}


def test_upsert_stamps_the_run_and_the_time_on_every_row(spark, cfg):
    rt = where(cfg)
    tables.upsert(spark, rt, ROWS, spark.createDataFrame([("1", "a"), ("2", "b")], ROWS.row_schema), run_id="r1")
    first = _lineage(spark, cfg, ROWS)
    assert {run for run, _ in first.values()} == {"r1"} and all(at is not None for _, at in first.values())
    # Rows that carry lineage of their own (read from another table) are stamped by the run writing them.
    again = spark.sql("SELECT '2' AS id, 'b2' AS text, 'old' AS run_id, TIMESTAMP '2000-01-01 00:00:00' AS created_at")
    tables.upsert(spark, rt, ROWS, again, run_id="r2")
    second = _lineage(spark, cfg, ROWS)
    assert second["1"] == first["1"] and second["2"][0] == "r2" and second["2"][1] >= first["2"][1]
    expected = spark.createDataFrame([("1", "a", "r1"), ("2", "b2", "r2")], "id string, text string, run_id string")
    assert_df_equality(
        tables.read(spark, rt, ROWS).drop("created_at"), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_overwrite_replaces_the_table_with_stamped_rows(spark, cfg):
    rt = where(cfg)
    tables.overwrite(spark, rt, ROWS, spark.createDataFrame([("1", "a"), ("2", "b")], ROWS.row_schema), run_id="r1")
    tables.overwrite(spark, rt, ROWS, spark.createDataFrame([("3", "c")], ROWS.row_schema), run_id="r2")
    expected = spark.createDataFrame([("3", "c", "r2")], "id string, text string, run_id string")
    assert_df_equality(tables.read(spark, rt, ROWS).drop("created_at"), expected, ignore_nullable=True)
    assert tables.read(spark, rt, ROWS).where("created_at IS NULL").count() == 0


def test_a_writer_must_hand_over_every_column_but_the_lineage(spark, cfg):
    with pytest.raises(TableSchemaError, match="stamped_rows: rows to write lack column"):
        tables.overwrite(spark, where(cfg), ROWS, spark.createDataFrame([("1",)], "id string"), run_id="r1")


SCORED = [  # id, a, b, error; `a` is required, `b` a criterion that may not apply (null)
    ("above", 3, 2, None),
    ("equal", 2, 2, None),
    ("a_low", 1, 1, None),
    ("b_low", 3, 1, None),
    ("b_na", 2, None, None),
    ("no_a", None, 3, None),
    ("failed", 3, 3, "Timeout"),
]


def _rekept(spark, cfg, threshold) -> dict:
    rt = where(cfg)
    tables.rekeep(spark, rt, VERDICTS, threshold, scores={"a": "low:a", "b": "low:b"}, required="a", failed="error")
    return {r.id: (r.keep, r.drop_reason) for r in tables.read(spark, rt, VERDICTS).collect()}


def test_rekeep_applies_a_threshold_to_the_stored_scores(spark, cfg):
    # Planted as the last run's threshold (1) left them: everything without an error kept.
    planted = spark.createDataFrame(
        [(i, a, b, e, e is None, None if e is None else "error") for i, a, b, e in SCORED], VERDICTS.row_schema
    )
    tables.upsert(spark, where(cfg), VERDICTS, planted, run_id="r1")
    assert _rekept(spark, cfg, 2) == {
        "above": (True, None),
        "equal": (True, None),
        "a_low": (False, "low:a"),  # the first score below names the reason
        "b_low": (False, "low:b"),
        "b_na": (True, None),  # a criterion that does not apply never drops a row
        "no_a": (False, "error"),  # no required score: the check failed
        "failed": (False, "error"),
    }
    assert _rekept(spark, cfg, 3)["equal"] == (False, "low:a")
    assert _rekept(spark, cfg, 1.5)["b_low"] == (False, "low:b") and _rekept(spark, cfg, 0.5)["b_low"] == (True, None)
    assert {r.run_id for r in tables.read(spark, where(cfg), VERDICTS).collect()} == {"r1"}  # scores, not rows, moved


def test_rekeep_is_for_a_verdict_table_with_those_scores(spark, cfg):
    with pytest.raises(TableSchemaError, match="stamped_rows"):
        tables.rekeep(spark, where(cfg), ROWS, 1, scores={"text": "t"}, required="text", failed="error")
    with pytest.raises(TableSchemaError, match="scored_verdicts"):
        tables.rekeep(spark, where(cfg), VERDICTS, 1, scores={"c": "low:c"}, required="a", failed="error")


def test_upsert_files_merges_by_key_past_the_engine_and_the_engine_reads_it(spark, cfg):
    """What a Ctrl-C's run_log row is written with (delta-rs on the table's files): a row replaced by key, one
    added, both stamped; a table not made yet is named, nothing written."""
    rt = where(cfg)
    tables.upsert(spark, rt, ROWS, spark.createDataFrame([("1", "a"), ("2", "b")], ROWS.row_schema), run_id="r1")
    tables.upsert_files(rt, ROWS, [{"id": "2", "text": "b2"}, {"id": "3", "text": "c"}], run_id="r2")
    expected = spark.createDataFrame(
        [("1", "a", "r1"), ("2", "b2", "r2"), ("3", "c", "r2")], "id string, text string, run_id string"
    )
    assert_df_equality(
        tables.read(spark, rt, ROWS).drop("created_at"), expected, ignore_row_order=True, ignore_nullable=True
    )
    assert tables.read(spark, rt, ROWS).where("created_at IS NULL").count() == 0
    missing = tables.contract("never_written", [("id", S)], key="id", parent="id")
    with pytest.raises(TableSchemaError, match="never_written: no table at"):
        tables.upsert_files(rt, missing, [{"id": "1"}], run_id="r3")
