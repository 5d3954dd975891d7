"""Where lakesynth runs: Databricks or this machine, and where its tables, files and journals live.

Resolved once per process (`Runtime.resolve`) from the config and the environment, then passed down:
no other module asks the environment where it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# sc://host:port of a Spark Connect server to use instead of starting the embedded one.
REMOTE_ENV = "LAKESYNTH_SPARK_REMOTE"
# The URL of a local stand-in for the workspace's Model Serving: the local engine then runs as Databricks serverless
# does (model calls through ai_query or the driver, no network from any other UDF: serverless.py), and
# `base_url: databricks` endpoints are answered there.
EMULATE_ENV = "LAKESYNTH_EMULATE_SERVERLESS"
# Where this machine keeps what outlives a run (where the last run wrote, for `lakesynth report` and the notebooks).
STATE_ENV = "LAKESYNTH_STATE_DIR"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """STATE_ENV, else ~/.cache/lakesynth."""
    env = os.environ if environ is None else environ
    return Path(env.get(STATE_ENV) or "~/.cache/lakesynth").expanduser()


@dataclass(frozen=True)
class Runtime:
    """The answer to "where am I": picklable, so it travels to executors."""

    databricks: bool
    catalog: str
    schema: str
    volume: str
    warehouse: str
    spark_remote: str = ""
    serving: str = ""  # EMULATE_ENV: the stand-in of the workspace's Model Serving

    @property
    def serverless(self) -> bool:
        """Whether UDFs must not reach the network: on Databricks (serverless runs every task), or emulating it."""
        return self.databricks or bool(self.serving)

    @classmethod
    def resolve(cls, cfg, environ: Mapping[str, str] | None = None) -> Runtime:
        """The runtime for `cfg` (any object with catalog, schema_, volume, warehouse)."""
        env = os.environ if environ is None else environ
        return cls(
            databricks="DATABRICKS_RUNTIME_VERSION" in env,
            catalog=cfg.catalog,
            schema=cfg.schema_,
            volume=cfg.volume,
            warehouse=str(Path(cfg.warehouse).resolve()) if "://" not in cfg.warehouse else cfg.warehouse,
            spark_remote=env.get(REMOTE_ENV, ""),
            serving=env.get(EMULATE_ENV, "").rstrip("/"),
        )

    def fqn(self, table: str) -> str:
        return f"{self.catalog}.{self.schema}.{table}"

    @property
    def schema_dir(self) -> Path:
        """The schema's folder locally: its tables, its volume's folder and the journals."""
        return Path(self.warehouse) / self.catalog / self.schema

    @property
    def volume_root(self) -> str:
        """The Unity Catalog Volume on Databricks; locally a folder named for the volume beside the tables."""
        if self.databricks:
            return f"/Volumes/{self.catalog}/{self.schema}/{self.volume}"
        return str(self.schema_dir / self.volume)

    def table_location(self, table: str) -> str:
        """Where a table's files live locally (on Databricks, Unity Catalog decides)."""
        return str(self.schema_dir / table)

    def files_dir(self, name: str) -> str:
        """A folder of output files (JSONL, adapters, exports) named for what it holds."""
        return f"{self.volume_root}/{name}"

    def journal_dir(self, stage: str) -> str:
        """Where a stage's LLM journal lives: in the Volume on Databricks, beside the tables locally."""
        if self.databricks:
            return f"{self.volume_root}/_journal/{stage}"
        return str(self.schema_dir / "_journal" / stage)
