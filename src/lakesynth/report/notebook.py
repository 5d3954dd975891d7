"""Where a notebook finds the pipeline's tables: the job's catalog, schema and volume on Databricks, the last
local run's warehouse elsewhere; and a read that never creates a table.

On Databricks a notebook task gets the deployed target's names as widgets (`catalog`, `schema`, `volume`), which
the job fills from its parameters (`base_parameters`): a dev deploy's schema carries the `dev_<user>_` prefix that
no config file knows. Locally, `lakesynth run` leaves a small marker in its warehouse (LAST_RUN: the catalog,
schema and volume it wrote), and a copy naming the warehouse in this machine's state folder (runtime.state_dir);
the notebook reads the last run's warehouse, else the project's default place, unless told another (a folder
relative to the notebook's, where Jupyter runs it, would find nothing). The config is found from the package (the
packaged default, or the project's conf/ beside src/), never from the working folder, which serverless does not
guarantee.

A notebook that finds none of the tables it shows stops with NoTables, naming where it looked, instead of
creating empty tables (as a stage's read does) or failing later with "Table or view not found".
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from lakesynth.config import packaged_config
from lakesynth.core import registry
from lakesynth.core.bundle import project_root
from lakesynth.core.runtime import Runtime, state_dir
from lakesynth.core.stage import RunContext
from lakesynth.errors import LakesynthError

log = logging.getLogger(__name__)
LAST_RUN = "_lakesynth_last_run.json"  # in the warehouse folder, beside the catalogs (not a table: no _delta_log)
WIDGETS = ("catalog", "schema", "volume")


class NoTables(LakesynthError):
    """None of a notebook's tables is where it looked. Shown without a traceback: the message says it all."""

    def _render_traceback_(self) -> list[str]:  # IPython shows these lines instead of a traceback
        return [f"{type(self).__name__}: {line}" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


class NotebookContext(RunContext):
    """A run context whose `read` never writes (a stage's read creates a missing table, and its schema): a
    missing table reads as no rows of its contract's columns."""

    def _rows(self, contract):
        if self.exists(contract.name):
            return self.spark.table(self.rt.fqn(contract.name))
        return self.spark.createDataFrame([], contract.schema)

    def exists(self, name: str) -> bool:
        return self.spark.catalog.tableExists(self.rt.fqn(name))

    def where(self) -> str:
        """`main.lakesynth_dev` and where its files are: the warehouse locally, Unity Catalog on Databricks."""
        place = "Unity Catalog" if self.rt.databricks else f"warehouse {self.rt.warehouse}"
        return f"{self.rt.catalog}.{self.rt.schema} ({place})"


def open_tables(
    catalog: str = "",
    schema: str = "",
    volume: str = "",
    *,
    warehouse: str = "",
    config: str = "",
    overrides: Sequence[str] = (),
    needs: Iterable[str] = (),
    dbutils=None,
) -> NotebookContext:
    """The context a notebook reads the pipeline's tables through, checked to hold at least one of `needs`.

    Each of catalog, schema and volume is, first found: the widget of that name (on Databricks, where a job's
    `base_parameters` fill it), the argument, locally the last run's (LAST_RUN in the warehouse), else the
    config's. The warehouse (local only) is the argument, else the last local run's (`remember`), else
    `<project>/.lakesynth/warehouse`, where `lakesynth run` in the project writes by default. `overrides`
    (`KEY=VALUE`) apply last.
    """
    chosen = {"catalog": catalog, "schema": schema, "volume": volume}
    settings: list[str] = []
    if dbutils is not None:
        for name in WIDGETS:
            dbutils.widgets.text(name, chosen[name], f"{name} (empty: the config's)")
            chosen[name] = dbutils.widgets.get(name).strip() or chosen[name]
    else:
        folder = Path(warehouse).expanduser().resolve() if warehouse else last_warehouse() or default_warehouse()
        if folder is not None:
            settings.append(f"warehouse={json.dumps(str(folder))}")
            last = last_run(folder)
            chosen = {name: chosen[name] or last.get(name, "") for name in WIDGETS}
    settings += [f"{name}={json.dumps(value)}" for name, value in chosen.items() if value]
    cfg = registry.load_config(config or config_file(), [*settings, "mlflow.enabled=false", *overrides])
    ctx = NotebookContext(cfg, registry.contracts(registry.default_stages()), Runtime.resolve(cfg))
    needs = list(needs)
    missing = [name for name in needs if not ctx.exists(name)]
    if missing:
        hint = (
            "Set the catalog and schema widgets (a job passes them as base_parameters), or run the job first."
            if ctx.rt.databricks
            else "Run `lakesynth run` first, or give this notebook's warehouse, catalog and schema parameters."
        )
        if len(missing) == len(needs):
            raise NoTables(f"no tables in {ctx.where()}: none of {', '.join(needs)}.\n{hint}")
        raise NoTables(
            f"{ctx.where()} lacks {', '.join(missing)} (it has {', '.join(n for n in needs if n not in missing)}): "
            "run the stages that write them first."
        )
    print(f"tables in {ctx.where()}")
    return ctx


def config_file() -> Path | None:
    """The config a notebook uses: the packaged default, else the project's conf/ beside src/ (workspace files
    whose links were not followed), else none (the built-in defaults). Found from the package, not the working
    folder."""
    for candidate in (packaged_config(), _project() / "conf" / "lakesynth.yml" if _project() else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def default_warehouse() -> Path | None:
    """`<project>/.lakesynth/warehouse`: where `lakesynth run` in the project writes by default."""
    root = _project() or _project(Path.cwd())
    return root / ".lakesynth" / "warehouse" if root else None


def remember(rt: Runtime, run_id: str) -> None:
    """Record in the warehouse where this local run wrote (LAST_RUN), for the notebooks. Written whole and
    renamed into place, so a reader never sees half of it."""
    folder = Path(rt.warehouse)
    if rt.databricks or "://" in rt.warehouse or not folder.is_dir():
        return
    marker = {
        "catalog": rt.catalog,
        "schema": rt.schema,
        "volume": rt.volume,
        "run_id": run_id,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write(folder / LAST_RUN, marker)
    # And on this machine, where the last run wrote: a notebook or `lakesynth report` opened anywhere finds it.
    try:
        _write(state_dir() / LAST_RUN, {**marker, "warehouse": str(folder)})
    except OSError as exc:
        log.warning("could not record the last run in %s: %s", state_dir(), exc)


def _write(path: Path, marker: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    os.replace(scratch, path)


def last_warehouse() -> Path | None:
    """The warehouse the last local run on this machine wrote (`remember`), if it is still there."""
    found = last_run(state_dir()).get("warehouse")
    return Path(found) if found and (Path(found) / LAST_RUN).is_file() else None


def find_warehouse(given: str = "", here: Path | None = None) -> Path | None:
    """The warehouse a command reads: `given`, else the one a run from `here` (the working folder) wrote by
    default, else the last run's on this machine, else the project's default."""
    if given:
        return Path(given).expanduser().resolve()
    local = (here or Path.cwd()) / ".lakesynth" / "warehouse"
    return local.resolve() if (local / LAST_RUN).is_file() else last_warehouse() or default_warehouse()


def last_run(warehouse: Path) -> dict[str, str]:
    """What `remember` recorded in `warehouse`; empty if nothing (or nothing readable) is there."""
    try:
        marker = json.loads((warehouse / LAST_RUN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in marker.items() if isinstance(v, str)} if isinstance(marker, dict) else {}


def _project(start: Path | None = None) -> Path | None:
    """The project folder (it holds databricks.yml): at or above `start`, by default above this package's source
    (an editable install, or the bundle's workspace files imported from src/)."""
    return project_root(start or Path(__file__).resolve().parents[1])  # the lakesynth package's folder
