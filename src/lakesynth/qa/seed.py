"""Seed ingest: a CSV/JSONL file or an existing table -> `seed_questions`.

Validation is all-or-nothing: any problem raises a SeedError naming the file and the rows,
and the table is left as it was. `seed_id` hashes the content, so re-ingesting adds nothing. In the
default `mirror` mode, seeds no longer in the source are deleted (and their derived rows with them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, ValidationInfo, field_validator
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.config import Section, resolve_path
from lakesynth.core import tables
from lakesynth.core.sources import QA_SEEDS, Source
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, S
from lakesynth.errors import SeedError


class SeedsConfig(Section):
    path: str = Field(
        "bank/seeds.csv",
        validate_default=True,
        description="CSV or JSONL seed file (relative to the config file), or `table:<catalog.schema.table>`.",
    )

    pairs: str = Field(
        "",
        description="Bring your own pairs (CSV/JSONL with question, answer; optional topic, in_scope, id; or "
        "`table:<name>`): the quality gate, format and later stages run on them, and nothing is generated.",
    )
    mode: Literal["mirror", "append"] = Field(
        "mirror",
        description="mirror: the table becomes exactly the source, and what was derived from a removed seed is "
        "deleted on the next run; append: seeds are only ever added or updated.",
    )

    @field_validator("path", "pairs")
    @classmethod
    def _resolve(cls, value: str, info: ValidationInfo) -> str:
        return value if value.startswith("table:") else resolve_path(value, info)


TABLE = tables.contract(
    "seed_questions",
    [("seed_id", S), ("topic", S), ("question", S), ("in_scope", B), ("category", S), ("metadata", S), ("source", S)],
    key="seed_id",
    parent="source",
)

REQUIRED = ("topic", "question", "in_scope")
OPTIONAL = ("category", "metadata")
TRUE_WORDS = ("true", "t", "yes", "y", "1", "in", "in_scope")
FALSE_WORDS = ("false", "f", "no", "n", "0", "out", "out_of_scope")


def raw_schema(columns: tuple[str, ...]) -> T.StructType:
    return T.StructType([T.StructField("_row", T.LongType())] + [T.StructField(c, T.StringType()) for c in columns])


RAW_SCHEMA = raw_schema(REQUIRED + OPTIONAL)
MAX_LISTED = 20


def read_seed_file(path: str, required=REQUIRED, optional=OPTIONAL, extra_hint: str = "metadata") -> pd.DataFrame:
    """One row per seed record, every field a string, `_row` the 1-based record number."""
    file = Path(path)
    if not file.is_file():
        raise SeedError(f"{path}: seed file not found")
    kind = file.suffix.lower()
    if kind not in (".csv", ".jsonl", ".ndjson"):
        raise SeedError(f"{path}: unsupported seed file type '{kind}'; use .csv or .jsonl")
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SeedError(f"{path}: not a UTF-8 text file (byte {exc.start} cannot be decoded); is it really {kind}?")
    if "\x00" in text:
        raise SeedError(f"{path}: contains NUL bytes; it is a binary file, not {kind}")
    if not text.strip():
        raise SeedError(f"{path}: the file is empty")
    records = _parse_jsonl(path, text) if kind != ".csv" else _parse_csv(path, text)
    if records.empty:
        raise SeedError(f"{path}: the file has no seed rows")
    missing = [c for c in required if c not in records.columns]
    if missing:
        found = ", ".join(map(str, records.columns)) or "none"
        raise SeedError(f"{path}: missing required column(s) {', '.join(missing)} (found: {found})")
    unknown = [c for c in records.columns if c not in required + optional]
    if unknown:
        raise SeedError(
            f"{path}: unknown column(s) {', '.join(map(str, unknown))}; allowed: {', '.join(required + optional)}"
            + (f" (put extra fields inside '{extra_hint}')" if extra_hint else "")
        )
    for col in optional:
        if col not in records.columns:
            records[col] = None
    records.insert(0, "_row", range(1, len(records) + 1))
    return records[["_row", *required, *optional]]


def _parse_csv(path: str, text: str) -> pd.DataFrame:
    # Lines that start with '#' above the header are comments (a template's notes); below it, every line is data.
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    text = "".join(lines)
    if not text.strip():
        raise SeedError(f"{path}: no header line (topic,question,in_scope) after the comments")
    if text.lstrip()[:1] in ("{", "["):
        raise SeedError(f"{path}: looks like JSON, not CSV; name it .jsonl or convert it")
    import csv
    import io

    # A row with more fields than the header would make pandas take its first column as the index and shift
    # every field: say so, instead of reporting the shifted values as bad.
    try:
        records = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise SeedError(f"{path}: not a valid CSV file: {exc}") from exc
    width = len(records[0]) if records else 0
    longer = [n for n, fields in enumerate(records[1:], start=1) if len(fields) > width]
    if longer:
        raise SeedError(
            f"{path}: row(s) {_listing(longer)} have more fields than the header's {width} "
            f"({', '.join(records[0])}); quote fields that contain commas"
        )
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SeedError(f"{path}: not a valid CSV file: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.replace({"": None}).astype(object).where(frame.notna(), None)


def _parse_jsonl(path: str, text: str) -> pd.DataFrame:
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if not isinstance(value, dict):
            bad.append(number)
            continue
        rows.append({k: _as_text(v) for k, v in value.items()})
    if bad:
        raise SeedError(f"{path}: not JSON Lines: line(s) {_listing(bad)} are not JSON objects")
    return pd.DataFrame(rows, dtype=object)


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def _listing(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:MAX_LISTED]))
    return shown + (f" and {len(numbers) - MAX_LISTED} more" if len(numbers) > MAX_LISTED else "")


def _blank(column: str) -> F.Column:
    """Null, or nothing but whitespace (spaces, tabs, newlines): Spark's trim() strips spaces only."""
    return F.col(column).isNull() | (F.regexp_replace(F.col(column), r"\s+", "") == "")


def find_problems(raw: DataFrame) -> DataFrame:
    """One row per (problem, `_row`) in the raw seeds; empty when they are all valid."""
    scope = F.lower(F.trim(F.col("in_scope")))
    dup = F.count(F.lit(1)).over(Window.partitionBy("topic", "question"))
    checks = [
        (_blank("topic"), "empty topic"),
        (_blank("question"), "empty question"),
        (~scope.isin(*TRUE_WORDS, *FALSE_WORDS) | scope.isNull(), "in_scope is not true/false/yes/no/1/0"),
        (F.col("question").isNotNull() & (dup > 1), "duplicate rows (same topic and question)"),
    ]
    flagged = raw.select("_row", F.array(*[F.when(c, F.lit(m)) for c, m in checks]).alias("_problems"))
    return flagged.select("_row", F.explode("_problems").alias("problem")).where(F.col("problem").isNotNull())


def normalize(raw: DataFrame, *, source: str) -> DataFrame:
    """One `seed_questions` row per valid raw seed; text kept literally, `seed_id` hashes the content."""
    scope = F.lower(F.trim(F.col("in_scope")))
    return raw.select(
        F.substring(F.sha2(F.concat_ws("\u001f", "topic", "question"), 256), 1, 16).alias("seed_id"),
        "topic",
        "question",
        scope.isin(*TRUE_WORDS).alias("in_scope"),
        "category",
        "metadata",
        F.concat(F.lit(f"{source}#"), F.col("_row").cast("string")).alias("source"),
    )


def _raw(spark: SparkSession, path: str, required: tuple, optional: tuple, what: str) -> tuple[DataFrame, str]:
    """The raw records of a seed (or pairs) file or table, every field a string, `_row` 1-based."""
    if path.startswith("table:"):
        name = path.removeprefix("table:")
        if not spark.catalog.tableExists(name):
            raise SeedError(f"{path}: {what} table not found")
        table = spark.table(name)
        missing = [c for c in required if c not in table.columns]
        if missing:
            raise SeedError(f"{path}: missing required column(s) {', '.join(missing)}")
        cols = [
            F.col(c).cast("string").alias(c) if c in table.columns else F.lit(None).cast("string").alias(c)
            for c in required + optional
        ]
        return table.select((F.monotonically_increasing_id() + 1).alias("_row"), *cols), name
    frame = read_seed_file(path, required, optional, extra_hint="metadata" if what == "seed" else "")
    return spark.createDataFrame(frame, schema=raw_schema(required + optional)), path


PAIR_REQUIRED = ("question", "answer")
PAIR_OPTIONAL = ("topic", "in_scope", "id")


def pair_problems(raw: DataFrame) -> DataFrame:
    """One row per (problem, `_row`) in imported pairs; empty when they are all valid."""
    scope = F.lower(F.trim(F.col("in_scope")))
    dup = F.count(F.lit(1)).over(Window.partitionBy("id"))
    checks = [
        (_blank("question"), "empty question"),
        (_blank("answer"), "empty answer"),
        (F.col("in_scope").isNotNull() & ~scope.isin(*TRUE_WORDS, *FALSE_WORDS), "in_scope is not true/false"),
        (F.col("id").isNotNull() & (dup > 1), "duplicate id"),
    ]
    flagged = raw.select("_row", F.array(*[F.when(c, F.lit(m)) for c, m in checks]).alias("_problems"))
    return flagged.select("_row", F.explode("_problems").alias("problem")).where(F.col("problem").isNotNull())


def normalize_pairs(raw: DataFrame, *, source: str) -> DataFrame:
    """One `seed_questions` row per imported pair: the question as the seed, the answer and the user's id
    (`source_id`: the `id` field, else the 1-based record number) in `metadata`, `seed_id` a hash of the id."""
    source_id = F.coalesce(F.col("id"), F.col("_row").cast("string"))
    scope = F.lower(F.trim(F.col("in_scope")))
    return raw.select(
        F.substring(F.sha2(F.concat(F.lit(f"{source}\u001f"), source_id), 256), 1, 16).alias("seed_id"),
        F.coalesce(F.col("topic"), F.lit("imported")).alias("topic"),
        "question",
        (scope.isNull() | scope.isin(*TRUE_WORDS)).alias("in_scope"),
        F.lit(None).cast("string").alias("category"),
        F.to_json(F.struct(F.col("answer"), source_id.alias("source_id"))).alias("metadata"),
        F.concat(F.lit(f"{source}#"), source_id).alias("source"),
    )


def run(ctx: RunContext) -> StageResult:
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    pairs = bool(cfg.seed.pairs)
    if pairs:
        raw, source = _raw(spark, cfg.seed.pairs, PAIR_REQUIRED, PAIR_OPTIONAL, "pairs")
    else:
        raw, source = _raw(spark, cfg.seed.path, REQUIRED, OPTIONAL, "seed")
    problems = pair_problems(raw) if pairs else find_problems(raw)
    listed = problems.orderBy("_row").limit(200).collect()
    if listed:
        by_problem: dict[str, list[int]] = {}
        for row in listed:
            by_problem.setdefault(row.problem, []).append(row._row)
        detail = "\n".join(f"  {problem}: row(s) {_listing(rows)}" for problem, rows in by_problem.items())
        what = "pairs" if pairs else "seeds"
        raise SeedError(f"{source}: invalid {what}, nothing was written (rows are 1-based data records):\n{detail}")
    rows_in = raw.count()
    name = source if (cfg.seed.pairs or cfg.seed.path).startswith("table:") else Path(source).name
    seeds = (normalize_pairs if pairs else normalize)(raw, source=name)
    before = tables.count(spark, rt, TABLE)
    same = ("question", "topic", "in_scope", "category", "metadata")
    changed = "NOT (" + " AND ".join(f"t.{c} <=> s.{c}" for c in same) + ")"
    tables.upsert(spark, rt, TABLE, seeds, run_id=cfg.run_id, update_when=changed)
    removed = tables.delete_absent(spark, rt, TABLE, "seed_id", seeds) if cfg.seed.mode == "mirror" else 0
    after = tables.count(spark, rt, TABLE)
    return StageResult(
        rows_in=rows_in,
        rows_out=after - before + removed,
        errors=0,
        tables=[TABLE],
        metrics={"removed": removed, "stored": rows_in - (after - before + removed)},  # already in the table
    )


STAGE = Stage(
    name="seed",
    help="ingest seed questions into seed_questions",
    run=run,
    writes=(TABLE,),
    config=SeedsConfig,
    sources=(
        Source("seeds", ("seed.path",), QA_SEEDS, "seed file (.csv/.jsonl) or table:<catalog.schema.table>", True),
        Source(
            "pairs",
            ("seed.pairs",),
            QA_SEEDS,
            "your own question/answer pairs (.csv/.jsonl or table:<name>) to run the quality gate on",
            True,
        ),
    ),
    off=lambda cfg: "" if cfg.seed.pairs or cfg.seed.path else "seed.path is empty: no seed questions",
)
