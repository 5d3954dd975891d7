"""The stage registry: every stage, found where it declares itself; everything else about stages is read here.

A stage module declares `STAGE = Stage(...)` at its top level; `default_stages()` finds those modules in the
package and imports them. The CLI's subcommands and input flags, the config's stage sections, the table contracts,
the local runner's graph check, what it reports of a stage switched off, the MLflow figures and `lakesynth stages`
all come from it, so adding a stage is writing its module and adding its task to a job in `resources/`. It is built on demand: no registry lives at import time.
"""

from __future__ import annotations

import functools
import graphlib
import importlib
import re
from collections.abc import Collection, Mapping
from pathlib import Path

from pydantic import Field, create_model

from lakesynth import config
from lakesynth.core.run_log import RUN_LOG
from lakesynth.core.sources import Source
from lakesynth.core.stage import RunContext, Stage
from lakesynth.core.tables import Table
from lakesynth.errors import ConfigError

_DECLARES = re.compile(r"^STAGE = Stage\(", re.M)
PACKAGE = Path(__file__).resolve().parent.parent  # the lakesynth package: stages live in its subpackages


@functools.cache
def stage_modules() -> tuple[str, ...]:
    """The modules of the package that declare a stage, found by reading their source (importing every module
    would load torch, xllamacpp and the rest on every command); read once per process."""
    return tuple(
        ".".join(("lakesynth", *path.relative_to(PACKAGE).with_suffix("").parts))
        for path in sorted(PACKAGE.rglob("*.py"))
        if _DECLARES.search(path.read_text(encoding="utf-8"))
    )


def default_stages() -> dict[str, Stage]:
    """Stage name -> its declaration, in data-flow order (a stage after the stages whose tables it reads, and after
    the checks that judge them)."""
    declared: dict[str, Stage] = {}
    for module in stage_modules():
        stage = importlib.import_module(module).STAGE
        if stage.name in declared:
            raise ConfigError(f"{module}: stage name '{stage.name}' is already declared")
        declared[stage.name] = stage
    # A stage comes after the writers of what it reads, and after the checks that judge what it reads; a check
    # does not wait for the other checks of the table it judges (one that needs another's verdicts reads them).
    writers: dict[str, set[str]] = {}
    checks: dict[str, set[str]] = {}
    for stage in declared.values():
        for table in stage.writes:
            writers.setdefault(table.name, set()).add(stage.name)
            if table.verdict_of:
                checks.setdefault(table.verdict_of, set()).add(stage.name)
    flow = graphlib.TopologicalSorter()
    for name, stage in sorted(declared.items()):
        judged = {t.verdict_of for t in stage.writes}
        after = set()
        for table in stage.reads:
            after |= writers.get(table, set()) | (checks.get(table, set()) if table not in judged else set())
        after |= set(stage.after)
        flow.add(name, *sorted(after - {name}))
    return {name: declared[name] for name in flow.static_order()}


def contracts(stages: Mapping[str, Stage]) -> dict[str, Table]:
    """Table name -> contract, for every table a stage writes (one writer per contract), and the run log the
    runner writes."""
    found: dict[str, Table] = {RUN_LOG.name: RUN_LOG}
    for stage in stages.values():
        for table in stage.writes:
            if table.name in found and found[table.name] != table:
                raise ConfigError(f"stage '{stage.name}' declares table '{table.name}' with a different contract")
            found[table.name] = table
    return found


def sources(stages: Mapping[str, Stage], names: Collection[str] = ()) -> tuple[Source, ...]:
    """The inputs the stages `names` (default: every stage) declare, in their order: a job's sources, whose flags
    replace the config's (sources.py)."""
    return tuple(dict.fromkeys(s for name in (names or stages) if name in stages for s in stages[name].sources))


@functools.cache
def config_model() -> type[config.Config]:
    """The full config model: the shared sections plus one section per registered stage."""
    tree: dict = {}
    for stage in default_stages().values():
        if stage.config is not None:
            node = tree
            for part in stage.config_key.split("."):
                node = node.setdefault(part, {})
            node[OWN] = (stage.config, stage.help)
    return _section_model("Config", tree, config.Config)


OWN = ""  # in the section tree: the model of the stage whose section is this node itself


def _section_model(name: str, tree: dict, base: type) -> type:
    """A config model from {key: subtree}, each subtree holding its stage's (model, help) under OWN and its
    dotted children: `quality.critic` nests under `quality`, which may itself be a stage's section (`quality`'s
    own keys, such as the top-up's `quality.target_per_seed`, sit beside `quality.critic`)."""
    fields = {}
    for key, value in tree.items():
        if key == OWN:
            continue
        children = {k: v for k, v in value.items() if k != OWN}
        own, help_text = value.get(OWN, (config.Section, key))
        model = _section_model(f"{key.title()}Config", children, own) if children else own
        fields[key] = (model, Field(default_factory=model, description=help_text))
    return create_model(name, __base__=base, __module__=__name__, **fields)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> config.Config:
    """`config.load_config` with every stage's section."""
    return config.load_config(path, overrides, model=config_model())


def graph_problems(
    tasks: Mapping[str, tuple[str, list[str]]], stages: Mapping[str, Stage], where: str = "the job"
) -> list[str]:
    """What is wrong with a job's task graph (task -> (stage, depends_on)): a task that names an unknown
    stage, or a stage that reads a table (or writes one whose parent table) no task upstream of it writes."""
    problems = []
    for key, (stage, _) in tasks.items():
        if stage not in stages:
            problems.append(f"{where}: task '{key}' runs unknown stage '{stage}' (known: {', '.join(stages)})")
    try:
        graphlib.TopologicalSorter({k: deps for k, (_, deps) in tasks.items()}).prepare()
    except graphlib.CycleError as exc:
        return [*problems, f"{where}: the tasks' depends_on form a cycle: {' -> '.join(exc.args[1])}"]

    @functools.cache
    def upstream(key: str) -> frozenset[str]:
        deps = tasks.get(key, ("", []))[1]
        return frozenset(deps).union(*(upstream(d) for d in deps if d in tasks))

    for key, (stage, _) in tasks.items():
        if stage not in stages:
            continue
        written = {t.name for up in upstream(key) if tasks[up][0] in stages for t in stages[tasks[up][0]].writes}
        for table in stages[stage].reads:
            if table not in written:
                problems.append(f"{where}: task '{key}' ({stage}) reads '{table}', which no task before it writes")
        ran_before = {tasks[up][0] for up in upstream(key)}
        in_job = {s for s, _ in tasks.values()}
        for first in stages[stage].after:
            if first in in_job and first not in ran_before:
                problems.append(f"{where}: task '{key}' ({stage}) must come after the task that runs '{first}'")
        own = {t.name for t in stages[stage].writes}  # a stage may write a parent table and its children
        for table in stages[stage].writes:
            parent = table.parent_table
            if parent and parent not in written | own and parent not in stages[stage].reads:  # reported above
                problems.append(
                    f"{where}: task '{key}' ({stage}) writes '{table.name}', whose parent table "
                    f"'{parent}' no task before it writes"
                )
    return problems


def open_context(path: str | Path | None = None, overrides: list[str] | None = None):
    """A run context on the config at `path`, with every registered table: what a notebook starts from."""
    return RunContext(load_config(path, overrides), contracts(default_stages()))
