"""What a stage is: its declaration (`Stage`), what it is handed (`RunContext`) and what it returns (`StageResult`).

A stage module declares itself once, `STAGE = Stage(...)`; the registry (registry.py) lists the modules,
and the CLI, the local runner's checks, the tracked tables and `lakesynth stages` are read from it.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from lakesynth.core import engine
from lakesynth.core import tables
from lakesynth.config import Config
from lakesynth.core.runtime import Runtime
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
        extra = "".join(f", {k} {v}" for k, v in self.metrics.items() if not isinstance(v, dict | list))
        return f"{stage}: ok, {self.rows_in} in, {self.rows_out} out, {self.errors} errors{extra}, {seconds:.1f} s"


@dataclass(frozen=True)
class Stage:
    """One stage, declared once in its module.

    `reads` names the tables it reads (their contracts belong to the stages that write them); `writes` holds
    the contracts of the tables it writes. `config` is its section of the config file, under `section`
    (default: the stage's name). `after` names stages it follows when its job runs them, though no table links them (a
    fine-tune writes files only)."""

    name: str
    help: str
    run: Callable[[RunContext], StageResult]
    reads: tuple[str, ...] = ()
    writes: tuple[Table, ...] = ()
    config: type[BaseModel] | None = None
    section: str = ""
    after: tuple[str, ...] = ()  # stages it follows, when its job has them, though no table links them

    @property
    def config_key(self) -> str:
        return self.section or self.name


class RunContext:
    """What the stages of one run share: config, runtime, the Spark session and the teacher endpoint
    (both started on first use), and the contracts of every registered table, by name."""

    def __init__(self, cfg: Config, contracts: Mapping[str, Table] | None = None, rt: Runtime | None = None) -> None:
        self.cfg = cfg
        self.rt = rt or Runtime.resolve(cfg)
        self.contracts = dict(contracts or {})
        self._stack = contextlib.ExitStack()
        self._endpoints: dict = {}
        self.topup: dict[str, int] | None = None  # a top-up round: seed_id -> questions still missing

    def for_topup(self, missing: dict[str, int]) -> RunContext:
        """This context (same engine, endpoints and contracts) for a top-up round: the questions stage then asks
        only the seeds in `missing` for that many more questions."""
        round_ctx = copy.copy(self)
        round_ctx.topup = missing
        return round_ctx

    def topup_round(self, names: tuple[str, ...], missing: dict[str, int], number: int) -> dict[str, StageResult]:
        """Run the stages `names`, in order, as top-up round `number` for `missing` (for_topup), each printing its
        line as the runner does; their results by name. A stage runs others by name: it never imports them."""
        from lakesynth.core import registry

        stages, round_ctx, results = registry.default_stages(), self.for_topup(missing), {}
        for name in names:
            started = time.monotonic()
            results[name] = stages[name].run(round_ctx)
            print("  " + results[name].line(f"{name} (round {number})", time.monotonic() - started), flush=True)
        return results

    def with_settings(self, overrides: list[str]) -> RunContext:
        """This context (same engine, endpoints and contracts) with a task's fixed `--set` overrides applied."""
        from lakesynth.config import with_overrides

        task_ctx = copy.copy(self)
        task_ctx.cfg = with_overrides(self.cfg, overrides)
        return task_ctx

    @property
    def spark(self):
        return engine.get_spark(self.rt)

    def endpoint(self, teacher=None):
        """The endpoint of `teacher` (endpoint settings; default: the `teacher` endpoint's), opened once per run: the
        embedded teacher starts here on first use and stops with the run, shared by every stage that calls it."""
        from lakesynth import llm

        teacher = teacher or self.cfg.endpoint("teacher")
        key = (teacher.base_url, teacher.model, teacher.api_key_env, teacher.gguf_path)
        if key not in self._endpoints:
            self._endpoints[key] = self._stack.enter_context(llm.open_endpoint(teacher))
        return self._endpoints[key]

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
