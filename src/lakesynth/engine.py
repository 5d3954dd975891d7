"""The Spark session: the cluster's on Databricks, otherwise an embedded Sail server.

Sail keeps its catalog in memory, so every start re-registers the Delta tables found under
the warehouse directory (`<warehouse>/<catalog>/<schema>/<table>`): a table written by one
run is found again by the next.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(warehouse: str) -> SparkSession:
    """The session every stage uses; one embedded server per process and warehouse."""
    if on_databricks():
        return SparkSession.builder.getOrCreate()
    return _embedded(str(Path(warehouse).resolve()))


@functools.cache
def _embedded(warehouse: str) -> SparkSession:
    # Sail logs every session at INFO to stderr; keep the CLI's output readable unless asked.
    os.environ.setdefault("RUST_LOG", "error")
    try:
        from pysail.spark import SparkConnectServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "The embedded engine needs the 'local' extra: pip install 'lakesynth[local]' (or run on Databricks)."
        ) from exc
    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    host, port = server.listening_address
    spark = SparkSession.builder.remote(f"sc://{host}:{port}").getOrCreate()
    spark._lakesynth_server = server  # keep the server alive as long as the session
    register_tables(spark, warehouse)
    return spark


def register_tables(spark: SparkSession, warehouse: str) -> list[str]:
    """Register every Delta table under the warehouse in Sail's in-memory catalog."""
    found = []
    for log_dir in sorted(Path(warehouse).glob("*/*/*/_delta_log")):
        table_dir = log_dir.parent
        catalog, schema, table = table_dir.parts[-3:]
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{catalog}`.`{schema}`")
        spark.sql(f"CREATE TABLE IF NOT EXISTS `{catalog}`.`{schema}`.`{table}` USING DELTA LOCATION '{table_dir}'")
        found.append(f"{catalog}.{schema}.{table}")
    log.debug("registered %d tables from %s", len(found), warehouse)
    return found
