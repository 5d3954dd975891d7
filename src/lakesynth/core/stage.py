"""What a stage is: its declaration (`Stage`), what it is handed (`RunContext`) and what it returns (`StageResult`).

A stage module declares itself once, `STAGE = Stage(...)`; the registry (registry.py) lists the modules,
and the CLI, the local runner's checks, the tracked tables and `lakesynth stages` are read from it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from lakesynth.config import Config
from lakesynth.core import engine, tables
from lakesynth.core.runtime import Runtime
from lakesynth.core.sources import Source
from lakesynth.core.tables import Table


@dataclass
class StageResult:
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    tables: list = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # an LLM stage's model and prompt version, for the run log
    prompt_version: str | None = None

    def add(self, part: StageResult) -> None:
        """Fold in one part of the stage's work (an LLM loop run once per category or mode): counts and numeric
        metrics summed, text metrics the first part's, the model and prompt version those of the last part."""
        self.rows_in += part.rows_in
        self.rows_out += part.rows_out
        self.errors += part.errors
        for k, v in part.metrics.items():
            if isinstance(v, int | float):
                self.metrics[k] = self.metrics.get(k, 0) + v
            elif isinstance(v, str | dict):  # how the calls were made, where tokens come from: alike for every part
                self.metrics.setdefault(k, v)
        self.model, self.prompt_version = part.model, part.prompt_version

    def line(self, stage: str, seconds: float) -> str:
        if "disabled" in self.metrics:  # a stage off (Stage.off), or with nothing to work on: said the same way
            return f"{stage}: off ({self.metrics['disabled']})"
        # Input rows done by an earlier run (an LLM stage's `skipped`, the seed stage's `stored`): on a rerun
        # "12 in, 0 out" read like data lost, so the line says they are kept. They count input rows, so they are
        # said beside "in" (an LLM stage's output rows are of another unit: 3 questions per seed).
        said = {"skipped": "done", "stored": "stored"}
        done = "".join(f" ({self.metrics[k]} already {word})" for k, word in said.items() if self.metrics.get(k))
        out = f"{self.rows_out} new" if done else f"{self.rows_out} out"
        extra = "".join(
            f", {k} {v}" for k, v in self.metrics.items() if not isinstance(v, dict | list) and k not in said
        )
        return f"{stage}: ok, {self.rows_in} in{done}, {out}, {self.errors} errors{extra}, {seconds:.1f} s"


@dataclass(frozen=True)
class Stage:
    """One stage, declared once in its module.

    `reads` names the tables it reads (their contracts belong to the stages that write them); `writes` holds
    the contracts of the tables it writes. `config` is its section of the config file, under `section`
    (default: the stage's name). `after` names stages it follows when its job runs them, though no table links them (a
    fine-tune writes files only).

    What the runner does around a stage is declared here too, so the runner, the CLI and the tracker name no stage:
    `off` says why the config switches it off (default: its section's `enabled` is false, `disabled()`), `top_up`
    is how a top-up round (core/rounds.py) asks it for the rows its items still miss, `figures` draws its MLflow
    figures from its summary entry, and `sources` are the inputs of its job that a command-line flag names."""

    name: str
    help: str
    run: Callable[[RunContext], StageResult]
    reads: tuple[str, ...] = ()
    writes: tuple[Table, ...] = ()
    config: type[BaseModel] | None = None
    section: str = ""
    after: tuple[str, ...] = ()  # stages it follows, when its job has them, though no table links them
    off: Callable[[Config], str] | None = None  # why `cfg` switches it off (a line naming the key), or ""
    top_up: Callable[[RunContext, dict[str, int]], StageResult] | None = None  # a round: item -> rows missing
    figures: Callable[[RunContext, dict[str, Any]], dict[str, Any]] | None = None  # summary entry -> {path: figure}
    sources: tuple[Source, ...] = ()

    @property
    def config_key(self) -> str:
        return self.section or self.name

    def why_off(self, cfg: Config) -> str:
        """Why `cfg` switches this stage off, or "": its `off`, else its section's `enabled` (disabled())."""
        return self.off(cfg) if self.off is not None else disabled(cfg, self.config_key)

    def execute(self, ctx: RunContext, missing: dict[str, int] | None = None) -> StageResult:
        """The stage under `ctx`: an empty result that says why when the config switches it off, else its work (with
        `missing`, its top-up for those items). What the runner and a top-up round call, every stage alike."""
        reason = self.why_off(ctx.cfg)
        if reason:
            return StageResult(metrics={"disabled": reason})
        if missing is None:
            return self.run(ctx)
        if self.top_up is None:
            raise TypeError(f"stage '{self.name}' declares no top_up")
        return self.top_up(ctx, missing)


def disabled(cfg: Config, key: str) -> str:
    """`<key>.enabled is false` when the section at dotted `key` has an `enabled` that is false, else ""."""
    section = cfg
    for part in key.split("."):
        section = getattr(section, part, None)
    if "enabled" in getattr(type(section), "model_fields", {}) and not section.enabled:
        return f"{key}.enabled is false"
    return ""


class RunContext:
    """What the stages of one run share: config, runtime, the Spark session (started on first use), the resources
    opened once per run (`shared`: the LLM layer's endpoints), and the contracts of every registered table, by name."""

    def __init__(self, cfg: Config, contracts: Mapping[str, Table] | None = None, rt: Runtime | None = None) -> None:
        self.cfg = cfg
        self.rt = rt or Runtime.resolve(cfg)
        self.contracts = dict(contracts or {})
        self._stack = contextlib.ExitStack()
        self._shared: dict = {}
        # Table -> a completion cap for the LLM stage writing it, below its max_tokens (a preview's first look at
        # one example: llm.Call.reply_cap); empty in a run.
        self.reply_caps: dict[str, int] = {}

    def with_settings(self, overrides: list[str]) -> RunContext:
        """This context (same engine, shared resources and contracts) with a task's fixed `--set` overrides applied."""
        from lakesynth.config import with_overrides

        task_ctx = copy.copy(self)
        task_ctx.cfg = with_overrides(self.cfg, overrides)
        return task_ctx

    @property
    def spark(self):
        return engine.get_spark(self.rt)

    def shared(self, key, open_cm: Callable[[], contextlib.AbstractContextManager]):
        """The resource under `key`, opened on first use (`open_cm()`, a context manager) and closed with the run:
        one per run, shared by every stage and task context of it (an embedded teacher starts once)."""
        if key not in self._shared:
            self._shared[key] = self._stack.enter_context(open_cm())
        return self._shared[key]

    def read(self, table: str | Table, *, kept: bool = True):
        """A table by name (or contract), checked against its contract; created empty if it is missing. With
        `kept`, the rows that a check (a verdict table on it) dropped are left out."""
        contract = table if isinstance(table, Table) else self.contracts.get(table)
        if contract is None:
            raise KeyError(f"no registered stage writes a table named '{table}'")
        rows = self._rows(contract)
        if not kept:
            return rows
        verdicts = [t for t in self.contracts.values() if t.verdict_of == contract.name]
        return tables.kept(self.spark, self.rt, rows, contract.key, verdicts)

    def _rows(self, contract: Table):
        """A table's rows, checked against its contract (created empty if missing: a stage writes it next)."""
        return tables.read(self.spark, self.rt, contract)

    def prune(self, stage: Stage) -> int:
        """Delete the rows of the stage's tables whose parent row is gone; run before the stage, every run, so
        what a removed seed or a regenerated question left behind never reaches the training set."""
        return sum(
            tables.prune(self.spark, self.rt, table, self.contracts[table.parent_table])
            for table in stage.writes
            if table.parent_table
        )

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
