"""Shared fixtures: one embedded Spark session, a fresh schema per test, the stand-in LLM server.

Run the tests with `make test` (it creates .venv with the `local` and `dev` extras).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

# One torch thread per worker, set before anything imports torch (and inherited by the CLI processes tests start).
# Two workers share two cores: torch's own two threads each spun waiting for the other, descheduled, and a local
# fine-tune and evaluation took 6.7 times the CPU (181 s against 27 s) and 3.5 times as long.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Likewise one partition per operator in each worker's embedded engine (Sail's default is one per core): the tests'
# tables are tiny, and two workers' engines each running two threads per query spent 6% more CPU on 2 cores.
os.environ.setdefault("SAIL_EXECUTION__DEFAULT_PARALLELISM", "1")

import pytest

from lakesynth.config import Config, EndpointConfig
from lakesynth.core import registry
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


# The files that take longest, handed out first. `--dist loadfile` gives a worker a whole file, and xdist's own order
# (most tests first, turned off in pyproject.toml) left the one-test whole-job files for last, run by one worker
# while the other sat idle. Longest first keeps both busy to the end; a file missing here only starts later.
LONGEST_FIRST = (  # from a run with each test's CPU time recorded, 2 workers on 2 cores, 2026-12-06
    "test_preview.py",
    "test_notebooks_and_tracking.py",
    "test_conversations.py",
    "test_parity.py",
    "test_faults.py",
    "test_sources.py",
    "test_init.py",
    "test_topup.py",
    "test_tools.py",
    "test_tool_training.py",
    "test_pipeline.py",
    "test_installed.py",
    "test_evaluate.py",
    "test_llm.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory):
    """Where runs record the last one (for `lakesynth report` and the notebooks; the CLI processes tests start
    inherit it): never the user's own, from a test, and under pytest's temporary folders, which pytest prunes."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LAKESYNTH_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    yield
    patch.undo()


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
    return sample_config(warehouse)


def sample_config(warehouse: Path) -> Config:
    """The sample config on `warehouse`, in a new schema: `cfg`, or a module fixture's own."""
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
    return on_standin(cfg, teacher_server)


def on_standin(cfg: Config, teacher_server: StandIn) -> Config:
    """`cfg` with the teacher pointed at the stand-in: `llm_cfg`, or a module fixture's own."""
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


def run_once(warehouse: Path, teacher_server: StandIn, *stages, change=lambda cfg: cfg) -> Config:
    """A schema of its own with `stages` run on the stand-in (the config as `change` returns it), for a module
    fixture that tests copy (`copy_schema`)."""
    cfg = change(on_standin(sample_config(warehouse), teacher_server))
    teacher_server.reset()
    for stage in stages:
        stage.run(context(cfg))
    return cfg


def pairs_config(warehouse, server: StandIn, pairs: str, *overrides: str) -> Config:
    """The sample config on a schema of its own, fed your own pairs (`--pairs`), asking the stand-in."""
    return registry.load_config(
        ROOT / "conf" / "lakesynth.yml",
        [
            f"warehouse={warehouse}",
            f"schema=t_{uuid.uuid4().hex[:10]}",
            f"seed.pairs={pairs}",
            f"endpoints.teacher.base_url={server.base_url}",
            "endpoints.teacher.model=standin",
            "mlflow.enabled=false",
            *overrides,
        ],
    )


def copy_schema(spark, source: Config, target: Config) -> Config:
    """Copy the tables and files of `source`'s schema into `target`'s (a fresh one) and return `target`: a module
    runs its upstream stages once, and each test changes a copy of its own.

    @pytest.fixture(scope="module")
    def answered(spark, warehouse, teacher_server):
        return run_once(warehouse, teacher_server, seeds, questions, responses)
    def test_x(spark, answered, llm_cfg):
        cfg = copy_schema(spark, answered, llm_cfg)
    """
    src, dst = (Path(where(c).table_location("_")).parent for c in (source, target))
    shutil.copytree(src, dst)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{target.catalog}`.`{target.schema_}`")
    for log_dir in sorted(dst.glob("*/_delta_log")):
        table = where(target).fqn(log_dir.parent.name)
        spark.sql(f"CREATE TABLE {table} USING DELTA LOCATION '{log_dir.parent}'")
    return target


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
