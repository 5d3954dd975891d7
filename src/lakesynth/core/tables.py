"""Table contracts and Delta I/O; the only module that writes a table (tests/test_tables.py checks the source).

Every table is created from its contract's DDL (all columns nullable) before its first write (the embedded
engine only registers, at start, the tables it finds under the warehouse: engine.register_tables). A table a stage
adds to is written with `upsert` (an append, or one SQL MERGE by key, so a rerun never duplicates a row); one a
stage derives whole each run, with `overwrite`. Both stamp each row's lineage (`run_id`, `created_at`), so a
stage hands over its own columns only. A verdict table's stored scores meet a new threshold with `rekeep`.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.core.runtime import Runtime
from lakesynth.errors import TableSchemaError

S, B, L, INT, D, TS = T.StringType(), T.BooleanType(), T.LongType(), T.IntegerType(), T.DoubleType(), T.TimestampType()

# Every row says which run wrote it and when; each contract also names its parent row's id.
LINEAGE = [("run_id", S), ("created_at", TS)]
LINEAGE_NAMES = tuple(n for n, _ in LINEAGE)
# What an LLM call costs and how it went; the fingerprint lets a rerun skip paid calls.
# What one request cost and how it ended (the error, and the raw reply when it was unusable).
LLM_RESULT = [
    ("prompt_tokens", L),
    ("completion_tokens", L),
    ("latency_ms", L),
    ("attempts", INT),
    ("error", S),
    ("raw_output", S),
]
LLM_ACCOUNTING = [("model", S), ("prompt_version", S), ("fingerprint", S), *LLM_RESULT]


# What a check decides about each row it judges: kept, or dropped and why (the first check that failed).
VERDICT = [("keep", B), ("drop_reason", S)]


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, T.DataType], ...]
    key: str
    parent: str
    verdict_of: str | None = None  # a verdict table: rows of that table, by key, with `keep` and `drop_reason`
    parent_table: str | None = None  # the table whose key `parent` is: a row whose parent is gone is deleted

    @property
    def schema(self) -> T.StructType:
        return T.StructType([T.StructField(n, t, True) for n, t in self.columns])

    @property
    def ddl(self) -> str:
        return ", ".join(f"`{n}` {t.simpleString()}" for n, t in self.columns)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.columns]

    @property
    def row_names(self) -> list[str]:
        """The columns a writer supplies: all but the lineage, which the write stamps."""
        return [n for n in self.names if n not in LINEAGE_NAMES]

    @property
    def row_schema(self) -> T.StructType:
        return T.StructType([f for f in self.schema.fields if f.name not in LINEAGE_NAMES])


def contract(
    name: str,
    columns: list,
    key: str,
    parent: str,
    verdict_of: str | None = None,
    parent_table: str | None = None,
) -> Table:
    """A table's contract: its columns, then the lineage columns every table has. With `parent_table`, `parent`
    is that table's key, and the rows whose parent row no longer exists are pruned (see `prune`). A verdict
    table is declared with `verdict`."""
    return Table(name, tuple(columns + LINEAGE), key, parent, verdict_of, parent_table)


def verdict(name: str, columns: list, judges: str, key: str) -> Table:
    """A verdict table's contract: one row per row of the table it `judges` (same key, that table its parent, so
    its rows go when theirs do), its check's `columns`, then VERDICT (`keep`, `drop_reason`)."""
    return contract(name, columns + VERDICT, key=key, parent=key, verdict_of=judges, parent_table=judges)


def kept(spark: SparkSession, rt: Runtime, rows: DataFrame, key: str, verdicts: list[Table]) -> DataFrame:
    """`rows` without those a verdict table has not kept: filtering is a `WHERE keep` downstream, never a delete
    upstream, so a dropped row and its reason stay where a user can ask for them. A verdict table that does not
    exist yet (its check has not run) keeps everything."""
    for table in verdicts:
        if spark.catalog.tableExists(rt.fqn(table.name)):
            dropped = spark.table(rt.fqn(table.name)).where("NOT keep OR keep IS NULL")
            rows = rows.join(dropped.select(F.col(table.key).alias(key)), key, "left_anti")
    return rows


def verdict_counts(verdicts: DataFrame) -> dict:
    """`kept` and `dropped` (reason -> count) of a verdict table, for the summary."""
    counts = {r.drop_reason: r["count"] for r in verdicts.groupBy("drop_reason").count().collect()}
    return {"kept": counts.pop(None, 0), "dropped": dict(sorted(counts.items()))}


def location(rt: Runtime, table: Table, spark: SparkSession | None = None) -> str:
    """Where the table's files live: under the warehouse locally, as Unity Catalog says on Databricks."""
    if rt.databricks and spark is not None:
        return spark.sql(f"DESCRIBE DETAIL {rt.fqn(table.name)}").first()["location"]
    return rt.table_location(table.name)


# The tables this process has created or checked, by session: a stage reads and writes the same tables many times,
# and each check is three statements (a third of a small stage's statements), by contract: another contract of the
# same table is checked again. Dropping through this module forgets.
_ensured: set[tuple[int, str, str]] = set()


def ensure(spark: SparkSession, rt: Runtime, table: Table) -> str:
    """Create the table from its contract if missing, check it if present (once a process); returns its full name."""
    fqn = rt.fqn(table.name)
    if (id(spark), fqn, table.ddl) in _ensured:
        return fqn
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{rt.catalog}`.`{rt.schema}`")
    where = "" if rt.databricks else f" LOCATION '{location(rt, table)}'"
    spark.sql(f"CREATE TABLE IF NOT EXISTS {fqn} ({table.ddl}) USING DELTA{where}")
    actual = _columns(spark, fqn)
    for name, dtype in table.columns:
        if actual.get(name) != dtype.simpleString():
            got = actual.get(name, "missing")
            raise TableSchemaError(
                f"{fqn}: column '{name}' expected {dtype.simpleString()}, got {got}. "
                f"The table predates this version of lakesynth: drop it or use another schema."
            )
    _ensured.add((id(spark), fqn, table.ddl))
    return fqn


def drop_schema(spark: SparkSession, rt: Runtime) -> None:
    """Drop the schema with its tables and (locally) its folder: a preview's scratch schema."""
    prefix = rt.fqn("")
    _ensured.difference_update({entry for entry in _ensured if entry[1].startswith(prefix)})
    try:
        spark.sql(f"DROP SCHEMA IF EXISTS `{rt.catalog}`.`{rt.schema}` CASCADE")
    finally:
        if not rt.databricks:
            shutil.rmtree(rt.schema_dir, ignore_errors=True)


def overwrite(spark: SparkSession, rt: Runtime, table: Table, rows: DataFrame, *, run_id: str) -> None:
    """Replace a table that a stage derives whole each run (`pair_verdicts`, `tools`, `training_chat` ...) with
    `rows`, stamped by run `run_id`, in one atomic overwrite. One left with an older version's columns is made
    again from its contract: the run derives every row of it, so nothing is lost, where `ensure` would stop on it."""
    fqn = rt.fqn(table.name)
    contract = {n: t.simpleString() for n, t in table.columns}
    checked = (id(spark), fqn, table.ddl) in _ensured
    if not checked and spark.catalog.tableExists(fqn) and _columns(spark, fqn) != contract:
        _ensured.difference_update({entry for entry in _ensured if entry[1] == fqn})
        spark.sql(f"DROP TABLE IF EXISTS {fqn}")
        if not rt.databricks:  # an external table's files stay behind a DROP: its new log starts clean
            shutil.rmtree(location(rt, table), ignore_errors=True)
    conform(stamped(rows, run_id), table).write.mode("overwrite").insertInto(ensure(spark, rt, table))


def _columns(spark: SparkSession, fqn: str) -> dict[str, str]:
    """An existing table's columns: name -> type, as its contract's DDL writes them."""
    return {f.name: f.dataType.simpleString() for f in spark.table(fqn).schema.fields}


def read(spark: SparkSession, rt: Runtime, table: Table) -> DataFrame:
    return spark.table(ensure(spark, rt, table))


def stamped(rows: DataFrame, run_id: str) -> DataFrame:
    """`rows` with the lineage every written row carries: the run that wrote it, and when (any they had is replaced)."""
    return rows.withColumn("run_id", F.lit(run_id)).withColumn("created_at", F.current_timestamp())


def conform(df: DataFrame, table: Table) -> DataFrame:
    """The contract's columns, in order and cast to its types; a missing column is a bug, not a null."""
    missing = [n for n in table.names if n not in df.columns]
    if missing:
        raise TableSchemaError(f"{table.name}: rows to write lack column(s) {', '.join(missing)}")
    return df.select([F.col(n).cast(t).alias(n) for n, t in table.columns])


def upsert(
    spark: SparkSession,
    rt: Runtime,
    table: Table,
    rows: DataFrame,
    *,
    run_id: str,
    update_when: str | None = None,
    replace_by: str | None = None,
) -> None:
    """MERGE rows into the table by key (an append when the table has none of their keys).

    Args:
        run_id: the run writing, stamped on every row (`stamped`).
        update_when: SQL condition on `t` (target) and `s` (source) under which a matched row is
            updated; None updates every match.
        replace_by: a column; the table's other rows with the same value of it are deleted in
            the same MERGE (a seed's questions are replaced as a whole when it is regenerated).
    """
    fqn = ensure(spark, rt, table)
    source = conform(stamped(rows, run_id), table)
    # Rows whose key (and replace_by value) the table has never seen need no MERGE: an append writes the same
    # rows, cheaper, and Sail retains memory for every MERGE (benchmarks/NOTES.md). A first run only appends.
    probes = {table.key, replace_by} - {None}
    if not any(spark.table(fqn).join(source.select(c), c, "left_semi").limit(1).collect() for c in probes):
        source.write.mode("append").insertInto(fqn)
        return
    source = source.withColumn("_op", F.lit("upsert"))
    if replace_by:
        stale = (
            spark.table(fqn)
            .join(source.select(replace_by).distinct(), replace_by, "left_semi")
            .join(source.select(table.key), table.key, "left_anti")
            .select(*table.names)
            .withColumn("_op", F.lit("delete"))
        )
        source = source.unionByName(stale)
    view = f"lakesynth_src_{uuid.uuid4().hex}"
    source.createOrReplaceTempView(view)
    cols = ", ".join(f"`{n}`" for n in table.names)
    sets = ", ".join(f"t.`{n}` = s.`{n}`" for n in table.names)
    values = ", ".join(f"s.`{n}`" for n in table.names)
    matched = "s._op = 'upsert'" + (f" AND ({update_when})" if update_when else "")
    try:
        spark.sql(
            f"MERGE INTO {fqn} t USING {view} s ON t.`{table.key}` = s.`{table.key}` "
            f"WHEN MATCHED AND s._op = 'delete' THEN DELETE "
            f"WHEN MATCHED AND {matched} THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED AND s._op = 'upsert' THEN INSERT ({cols}) VALUES ({values})"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)


def upsert_files(rt: Runtime, table: Table, rows: list[dict], *, run_id: str) -> None:
    """MERGE `rows` (dicts of the contract's columns but the lineage) by key straight into an existing local table's
    Delta files with delta-rs, not through the engine: for what a run records while its engine is stopping under a
    Ctrl-C (llm/stop.py), when a statement to the engine never returns. A local warehouse only (the `local` extra
    brings delta-rs, as the engine)."""
    import datetime

    import deltalake
    import pyarrow as pa

    if rt.databricks or "://" in rt.warehouse:
        raise ValueError(f"{table.name}: a direct write needs a local warehouse, not {rt.warehouse}")
    where = location(rt, table)
    if not deltalake.DeltaTable.is_deltatable(where):
        raise TableSchemaError(f"{rt.fqn(table.name)}: no table at {where} yet, so nothing to merge into")
    target = deltalake.DeltaTable(where)
    now = datetime.datetime.now(datetime.UTC)
    stamped_rows = [{**row, "run_id": run_id, "created_at": now} for row in rows]
    source = pa.Table.from_pylist(stamped_rows, schema=pa.schema(target.schema().to_arrow()))
    key = f"`{table.key}`"
    merge = target.merge(source, predicate=f"t.{key} = s.{key}", source_alias="s", target_alias="t")
    merge.when_matched_update_all().when_not_matched_insert_all().execute()


def rekeep(
    spark: SparkSession,
    rt: Runtime,
    table: Table,
    threshold: float,
    *,
    scores: dict[str, str],
    required: str,
    failed: str,
) -> None:
    """Apply `threshold` again to the scores a verdict table stores, on every row at once: a changed threshold
    costs no call. A row is kept when it has no `error`, a `required` score, and no score below `threshold` (a
    null score is a criterion that does not apply). Its `drop_reason` is `failed` for an error or a missing
    `required` score, else the reason of the first score below (`scores`: column -> reason, in that order)."""
    missing = [c for c in ("error", required, *scores) if c not in table.names]
    if not table.verdict_of or missing:
        raise TableSchemaError(
            f"{table.name}: not a verdict table with column(s) error, {required}, {', '.join(scores)}"
        )
    t = float(threshold)
    keep = " AND ".join(
        [f"error IS NULL AND `{required}` IS NOT NULL", *[f"(`{c}` IS NULL OR `{c}` >= {t})" for c in scores]]
    )
    below = " ".join(f"WHEN `{c}` < {t} THEN '{reason}'" for c, reason in scores.items())
    spark.sql(
        f"UPDATE {ensure(spark, rt, table)} SET keep = ({keep}), "
        f"drop_reason = CASE WHEN error IS NOT NULL OR `{required}` IS NULL THEN '{failed}' {below} END"
    ).collect()


def delete_absent(spark: SparkSession, rt: Runtime, table: Table, column: str, present: DataFrame) -> int:
    """Delete the rows of `table` whose `column` value is not in `present` (one column of that name); returns
    how many. Nothing to delete costs one probe and no write; otherwise the keys are staged first, so the MERGE
    deletes a fixed set however the table changes under it."""
    fqn = rt.fqn(table.name)
    if not spark.catalog.tableExists(fqn):
        return 0
    gone = spark.table(fqn).join(present.select(column).distinct(), column, "left_anti").select(table.key)
    if not gone.limit(1).collect():
        return 0
    staged = materialize(spark, rt, f"{table.name}_gone", gone)
    view = f"lakesynth_gone_{uuid.uuid4().hex}"
    staged.createOrReplaceTempView(view)
    try:
        spark.sql(
            f"MERGE INTO {fqn} t USING {view} s ON t.`{table.key}` = s.`{table.key}` WHEN MATCHED THEN DELETE"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)
    return staged.count()


def prune(spark: SparkSession, rt: Runtime, table: Table, parent: Table) -> int:
    """Delete the rows of `table` whose parent row is gone from `parent` (a seed removed, a question
    regenerated): every derived table holds only rows whose source still exists."""
    keys = read(spark, rt, parent).select(F.col(parent.key).alias(table.parent))
    return delete_absent(spark, rt, table, table.parent, keys)


def materialize(spark: SparkSession, rt: Runtime, name: str, rows: DataFrame) -> DataFrame:
    """Write rows once to a fresh staging table `_staging_<name>` and read them back.

    An LLM-calling plan must run exactly once: a plan that uses it twice (a union, a MERGE source)
    would call the endpoint again, and serverless has no cache(). So its output is staged first.
    """
    twin = Table(f"_staging_{name}", tuple((f.name, f.dataType) for f in rows.schema.fields), rows.columns[0], "")
    fqn = rt.fqn(twin.name)
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{rt.catalog}`.`{rt.schema}`")
    spark.sql(f"DROP TABLE IF EXISTS {fqn}")
    where = ""
    if not rt.databricks:
        path = location(rt, twin)
        shutil.rmtree(path, ignore_errors=True)
        where = f" LOCATION '{path}'"
    spark.sql(f"CREATE TABLE {fqn} ({twin.ddl}) USING DELTA{where}")
    rows.write.mode("append").insertInto(fqn)
    return spark.table(fqn)


def pending(spark: SparkSession, rt: Runtime, table: Table, requests: DataFrame, key: str) -> DataFrame:
    """The requests without a successful row for the same key and request fingerprint: what a run must
    still pay for (a changed prompt or parameter changes the fingerprint, so it is pending again)."""
    done = read(spark, rt, table).where("error IS NULL").select(key, "fingerprint").distinct()
    return requests.join(done, [key, "fingerprint"], "left_anti")


def chunks(rows: DataFrame, key: str, total: int, size: int) -> list[DataFrame]:
    """`rows` split by a hash of `key` into about total/size parts, each processed (called, staged and
    merged) before the next, so memory and the work a crash can lose are bounded by `size`, not by the table."""
    n = max(1, -(-total // size))
    if n == 1:
        return [rows]
    bucket = F.pmod(F.xxhash64(key), F.lit(n))
    return [rows.where(bucket == i) for i in range(n)]


def count(spark: SparkSession, rt: Runtime, table: Table) -> int:
    return spark.table(ensure(spark, rt, table)).count()
