"""Shared fixtures: one embedded Spark session, a fresh schema per test, the stand-in LLM server.

Run the tests with `make test` (it creates .venv with the `local` and `dev` extras).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from lakesynth.config import Config, load_config
from lakesynth.engine import get_spark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("warehouse")


@pytest.fixture(scope="session")
def spark(warehouse):
    """The embedded Sail session, started once.

    def test_x(spark):
        spark.range(3).count()
    """
    return get_spark(str(warehouse))


@pytest.fixture
def cfg(warehouse, tmp_path) -> Config:
    """The sample config on the session warehouse, with a schema of its own per test.

    def test_x(cfg):
        assert cfg.schema_.startswith("t_")
    """
    return load_config(
        ROOT / "conf" / "lakesynth.yml",
        [f"warehouse={warehouse}", f"schema=t_{uuid.uuid4().hex[:10]}", "run_id=test-run"],
    )


@pytest.fixture(autouse=True)
def restore_env():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def write(path: Path, text: str | bytes) -> str:
    """Write a fixture file and return its path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)
