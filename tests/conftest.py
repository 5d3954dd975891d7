"""Shared fixtures: one embedded Spark session, a fresh schema per test, the stand-in LLM server.

Run the tests with `make test` (it creates .venv with the `local` and `dev` extras).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from lakesynth.core import registry
from lakesynth.config import Config, EndpointConfig
from lakesynth.core.engine import get_spark
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import RunContext
from lakesynth.llm.standin import StandIn, StandInOptions

ROOT = Path(__file__).resolve().parents[1]

# pytest-xdist workers run from `python -c`: a __main__ with no file, which pyspark's Connect client takes for its
# own doctest run (and then looks for a Spark installation). Give it a file, one that multiprocessing's spawned
# children (the execution sandbox's workers) can run as their __main__: it does nothing.
_main = sys.modules["__main__"]
if _main.__spec__ is None and not hasattr(_main, "__file__"):
    _main.__file__ = str(Path(__file__).with_name("xdist_main.py"))


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("warehouse")


@pytest.fixture(scope="session")
def spark(warehouse):
    """The embedded Sail session, started once.

    def test_x(spark):
        spark.range(3).count()
    """
    return get_spark(Runtime(False, "main", "unused", "lakesynth", str(warehouse)))


@pytest.fixture
def cfg(warehouse, tmp_path) -> Config:
    """The sample config on the session warehouse, with a schema of its own per test.

    def test_x(cfg):
        assert cfg.schema_.startswith("t_")
    """
    return registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [f"warehouse={warehouse}", f"schema=t_{uuid.uuid4().hex[:10]}", "run_id=test-run"],
    )


@pytest.fixture(scope="session")
def teacher_server():
    """The stand-in OpenAI-compatible server on 127.0.0.1 for the whole session.

    def test_x(teacher_server):
        teacher_server.reset(fault_rate=0.2)  # new options, fresh counters
    """
    server = StandIn(StandInOptions()).start()
    yield server
    server.stop()


@pytest.fixture
def llm_cfg(cfg, teacher_server) -> Config:
    """`cfg` with the teacher pointed at the stand-in, which starts each test with no faults and zero counts."""
    teacher_server.reset()
    return with_endpoint(cfg, base_url=teacher_server.base_url, model="standin", max_concurrency=16, timeout_s=5)


def with_endpoint(cfg: Config, name: str = "teacher", **settings) -> Config:
    """`cfg` with endpoint `name` (added if missing) changed, as `--set endpoints.<name>.<key>=...` would."""
    own = cfg.endpoints.get(name) or EndpointConfig.model_construct(_fields_set=set())
    endpoints = {**cfg.endpoints, name: own.model_copy(update=settings)}
    return cfg.model_copy(update={"endpoints": endpoints})


def context(cfg: Config) -> RunContext:
    """A run context for calling one stage directly, as the local runner would: `questions.run(context(cfg))`."""
    return RunContext(cfg, registry.contracts(registry.default_stages()))


def where(cfg: Config) -> Runtime:
    """The runtime of `cfg`, for the table layer: `tables.read(spark, where(cfg), questions.TABLE)`."""
    return Runtime.resolve(cfg)


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


@pytest.fixture
def workspace(tmp_path) -> Path:
    """The bundle's files as `databricks bundle deploy` syncs them to ${workspace.file_path}."""
    files = tmp_path / "Workspace" / "Users" / "standin@example.com" / ".bundle" / "lakesynth" / "dev" / "files"
    files.mkdir(parents=True)
    shutil.copy2(ROOT / "databricks.yml", files / "databricks.yml")
    for name in ("resources", "conf"):
        shutil.copytree(ROOT / name, files / name)
    return files
