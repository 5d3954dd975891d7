"""The Spark session: the cluster's on Databricks, otherwise an embedded Sail server.

Sail keeps its catalog in memory, so every start re-registers the Delta tables found under
the warehouse directory (`<warehouse>/<catalog>/<schema>/<table>`): a table written by one
run is found again by the next.
"""

from __future__ import annotations

import functools
import importlib.machinery
import logging
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from pyspark.sql import SparkSession

from lakesynth.core.runtime import REMOTE_ENV, Runtime
from lakesynth.errors import ConfigError

log = logging.getLogger(__name__)


def get_spark(rt: Runtime) -> SparkSession:
    """The session every stage uses; one embedded server per process and warehouse."""
    if rt.databricks:
        return SparkSession.builder.getOrCreate()
    _give_main_a_spec()
    if rt.spark_remote:
        return _remote(rt.spark_remote, rt.warehouse)
    return _embedded(rt.warehouse)


def _give_main_a_spec() -> None:
    """pyspark's Connect client takes a `__main__` with neither a file nor a spec for its own doctest run, and then
    looks for a Spark installation (SPARK_HOME) that pyspark-client never has: so `python -c`, a script piped to
    `python`, and any launcher that runs code in a bare `__main__` stopped before the engine started. Such a
    `__main__` gets the spec `python -m` gives one; multiprocessing's spawned children skip a main named `__main__`,
    as they skipped one without a file, so nothing else changes."""
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None and not hasattr(main, "__file__"):
        main.__spec__ = importlib.machinery.ModuleSpec("__main__", None)


@functools.cache
def _remote(url: str, warehouse: str) -> SparkSession:
    """A Spark Connect server already running on this machine (`sail spark server` from the same environment,
    so it can import lakesynth's UDFs): the engine's memory then lives in its own process, as executors do on a
    cluster. Not pyspark's SPARK_REMOTE: the Connect client sets that itself, and child processes inherit it."""
    address = urlsplit(url.split(";")[0])
    if address.scheme != "sc" or not address.hostname:
        raise ConfigError(f"{REMOTE_ENV}={url!r}: expected sc://host:port")
    try:  # the Connect client retries a dead address for minutes; say so at once
        socket.create_connection((address.hostname, address.port or 15002), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"{REMOTE_ENV}={url}: no Spark Connect server answers there ({exc})") from None
    spark = _local(SparkSession.builder.remote(url).getOrCreate())
    register_tables(spark, warehouse)
    return spark


@functools.cache
def _embedded(warehouse: str) -> SparkSession:
    # Sail logs every session at INFO to stderr; keep the CLI's output readable unless asked.
    os.environ.setdefault("RUST_LOG", "error")
    # Rows per batch handed to operators and pandas UDFs (Sail ignores spark.sql.execution.arrow.*). Sail's
    # 8192 made a UDF batch of rendered prompts hold tens of MB at once; 1024 keeps memory flat as tables grow.
    os.environ.setdefault("SAIL_EXECUTION__BATCH_SIZE", "1024")
    try:
        from pysail.spark import SparkConnectServer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "The embedded engine needs the 'local' extra: pip install 'lakesynth[local]' (or run on Databricks)."
        ) from exc
    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    host, port = server.listening_address
    # pyspark's client records the calling line of every DataFrame call for the server's error context (and imports
    # IPython's kernel to leave its frames out); Sail does not use it: ~18 us a call and 0.2 s a process of CPU.
    debugging = "spark.python.sql.dataFrameDebugging.enabled"
    spark = _local(SparkSession.builder.remote(f"sc://{host}:{port}").config(debugging, "false").getOrCreate())
    spark._lakesynth_server = server  # keep the server alive as long as the session
    register_tables(spark, warehouse)
    return spark


def _local(spark: SparkSession) -> SparkSession:
    """A session on a server of this machine: no reattachable execution. It lets a long query survive a dropped
    connection, which a local socket does not drop, at the price of release calls after every query (half the
    client's CPU of a small query: 6.6 ms against 3.3)."""
    spark.client.disable_reattachable_execute()
    return spark


def register_tables(spark: SparkSession, warehouse: str) -> list[str]:
    """Register every Delta table under the warehouse in Sail's in-memory catalog."""
    found, schemas = [], set()
    for log_dir in sorted(Path(warehouse).glob("*/*/*/_delta_log")):
        table_dir = log_dir.parent
        catalog, schema, table = table_dir.parts[-3:]
        if (catalog, schema) not in schemas:  # once a schema: a statement costs as much CPU as a table's
            spark.sql(f"CREATE DATABASE IF NOT EXISTS `{catalog}`.`{schema}`")
            schemas.add((catalog, schema))
        spark.sql(f"CREATE TABLE IF NOT EXISTS `{catalog}`.`{schema}`.`{table}` USING DELTA LOCATION '{table_dir}'")
        found.append(f"{catalog}.{schema}.{table}")
    log.debug("registered %d tables from %s", len(found), warehouse)
    return found
