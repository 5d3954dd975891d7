"""The stage registry: one declaration per stage, and everything derived from it agrees with the bundle."""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from lakesynth import pipeline
from lakesynth.core import command, registry
from lakesynth.core.stage import Stage, StageResult
from lakesynth.core.tables import Table
from lakesynth.errors import ConfigError

SRC = ROOT / "src" / "lakesynth"


def _lakesynth(*args):
    return subprocess.run(
        [sys.executable, "-m", "lakesynth.cli", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_every_stage_module_declares_one_stage_with_its_tables_and_config():
    stages = registry.default_stages()
    jobs = {job: {stage for stage, _ in graph.values()} for job, graph in pipeline.job_graphs(ROOT).items()}
    assert set(stages) == set().union(*jobs.values())  # every registered stage runs in a job, and only those
    assert list(stages).index("finetune") > list(stages).index("tool_format")
    for job_stages in jobs.values():  # each job's stages in data-flow order (the two jobs interleave)
        flow = [s for s in stages if s in job_stages]
        for name in flow:
            first = {w for w in flow for t in stages[w].writes if t.name in stages[name].reads} | set(
                stages[name].after
            )
            assert all(flow.index(w) < flow.index(name) for w in first & set(flow) - {name}), name
    declared_in = {importlib.import_module(m).STAGE.name: m for m in registry.stage_modules()}
    for name, stage in stages.items():  # each stage runs its own module's code, never another stage's
        assert isinstance(stage, Stage) and stage.help and stage.run.__module__ == declared_in[name], name
        assert all(isinstance(t, Table) for t in stage.writes)
    # Every table a stage reads is written by some registered stage.
    written = set(registry.contracts(stages))
    assert {t for s in stages.values() for t in s.reads} <= written
    # The config model has one section per stage that declares one, under its key.
    fields = registry.config_model().model_fields
    assert {"seed", "questions", "responses", "format", "finetune", "quality"} <= set(fields)
    cfg = registry.load_config(ROOT / "conf" / "lakesynth.yml")
    assert cfg.quality.critic.enabled is False
    for stage in (s for s in stages.values() if s.config is not None):  # each stage's section: its model, its key
        section = cfg
        for part in stage.config_key.split("."):
            section = getattr(section, part)
        assert isinstance(section, stage.config), stage.name


def test_stages_command_agrees_with_the_job_files():
    table = _lakesynth("stages")
    as_json = _lakesynth("stages", "--json")
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    rows = json.loads(as_json.stdout)
    graphs = pipeline.job_graphs(ROOT)
    # One row per task of every job, in the job's run order, naming its stage and tables.
    for job, graph in graphs.items():
        assert [r["task"] for r in rows if r["job"] == job] == pipeline.order(graph)
    stages = registry.default_stages()
    for row in rows:
        stage = stages[row["stage"]]
        assert row["reads"] == list(stage.reads) and row["writes"] == [t.name for t in stage.writes]
        line = next(x for x in table.stdout.splitlines() if x.split()[:2] == [row["task"], row["stage"]])
        for name in row["reads"] + row["writes"]:
            assert name in line
    assert {f"job {job}" for job in graphs} <= set(table.stdout.splitlines())


def test_help_lists_exactly_the_registered_stages():
    parser = command._parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {
        "run",
        "stages",
        "show",
        "report",
        "init",
        "preview",
        "estimate",
        *registry.default_stages(),
    }
    shown = _lakesynth("--help").stdout
    for name, stage in registry.default_stages().items():
        assert re.search(rf"^\s+{name}\b", shown, re.M), name


def test_a_stage_switched_off_says_why_the_same_way_for_every_stage():
    """The runner asks each stage's declaration (Stage.why_off) whether it runs: by default its section's `enabled`;
    what it reports is one line, whichever stage it is."""
    stages = registry.default_stages()
    cfg = registry.load_config(ROOT / "conf" / "lakesynth.yml")
    switched = [s for s in stages.values() if s.off is None and s.config and "enabled" in s.config.model_fields]
    assert {s.name for s in switched} >= {"critic", "judge", "relevance", "preference", "export", "evaluate"}
    for stage in switched:
        off = registry.load_config(ROOT / "conf" / "lakesynth.yml", [f"{stage.config_key}.enabled=false"])
        assert stage.why_off(off) == f"{stage.config_key}.enabled is false"
    assert stages["topup"].why_off(cfg) == "quality.target_per_seed is 0"
    assert stages["format"].why_off(cfg) == stages["call_verdicts"].why_off(cfg) == ""
    # call_verdicts' `enabled` switches its dedup only: the verdicts are combined whatever it says.
    no_dedup = registry.load_config(ROOT / "conf" / "lakesynth.yml", ["tools.dedup.enabled=false"])
    assert stages["call_verdicts"].why_off(no_dedup) == ""
    off = StageResult(metrics={"disabled": "quality.critic.enabled is false"})
    assert off.line("critic", 0.01) == "critic: off (quality.critic.enabled is false)"
    # A rerun: the input rows done before are said beside "in", whose unit they share (6 seeds, 6 new questions).
    rerun = StageResult(rows_in=6, rows_out=6, metrics={"skipped": 4, "prompt_tokens": 80})
    assert (
        rerun.line("questions", 1.04)
        == "questions: ok, 6 in (4 already done), 6 new, 0 errors, prompt_tokens 80, 1.0 s"
    )
    seeds = StageResult(rows_in=24, metrics={"removed": 0, "stored": 24})
    assert seeds.line("seed", 0.5) == "seed: ok, 24 in (24 already stored), 0 new, 0 errors, removed 0, 0.5 s"


def test_a_task_with_an_unknown_stage_or_an_unwritten_input_is_named():
    stages = registry.default_stages()
    good = pipeline.job_graph(ROOT)
    assert registry.graph_problems(good, stages) == []
    unknown = {**good, "polish": ("polish", ["format"])}
    assert "the job: task 'polish' runs unknown stage 'polish'" in registry.graph_problems(unknown, stages)[0]
    # responses no longer depends on questions: what it reads is written by no task before it (nor is the
    # critic's verdict table, which dedup reads, upstream of dedup any more).
    orphan = {**good, "responses": ("responses", ["seed"])}
    assert registry.graph_problems(orphan, stages) == [
        "the job: task 'responses' (responses) reads 'synthetic_questions', which no task before it writes",
        "the job: task 'responses' (responses) reads 'question_verdicts', which no task before it writes",
        "the job: task 'dedup' (dedup) reads 'question_verdicts', which no task before it writes",
        "the job: task 'export' (export) reads 'question_verdicts', which no task before it writes",
    ]
    with pytest.raises(ConfigError, match="reads 'synthetic_questions'"):
        pipeline.check(orphan, stages, "lakesynth")
    # No table links a fine-tune to its evaluation: the stage says what it follows, and the check holds the job to it.
    early = {**good, "evaluate": ("evaluate", ["format"])}
    assert registry.graph_problems(early, stages) == [
        "the job: task 'evaluate' (evaluate) must come after the task that runs 'finetune'"
    ]


def test_the_local_runner_refuses_a_broken_job_before_anything_runs(tmp_path):
    (tmp_path / "resources").mkdir()
    (tmp_path / "databricks.yml").write_text("bundle: {name: x}\ninclude: [resources/*.yml]\n")
    job = (ROOT / "resources" / "lakesynth.job.yml").read_text()
    (tmp_path / "resources" / "lakesynth.job.yml").write_text(job.replace("- seed\n", "- sowing\n", 1))
    cfg = registry.load_config(ROOT / "conf" / "lakesynth.yml", [f"warehouse={tmp_path / 'wh'}"])
    with pytest.raises(ConfigError, match="task 'seed' runs unknown stage 'sowing'"):
        pipeline.run(cfg, root=tmp_path)
    assert not (tmp_path / "wh").exists()  # nothing was written


def _project_imports(path: Path) -> set[str]:
    """The lakesynth modules a source file imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lakesynth"):
            found.add(node.module)
            if node.module == "lakesynth":
                found |= {f"lakesynth.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lakesynth")}
    return found


def _module_files(module: str) -> list[Path]:
    base = SRC / Path(*module.split(".")[1:])
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def test_import_graph():
    stage_modules = set(registry.stage_modules())
    assert {"lakesynth.qa.seed", "lakesynth.qa.questions", "lakesynth.qa.format"} <= stage_modules
    for module in stage_modules:
        imported = {m for f in _module_files(module) for m in _project_imports(f)}
        assert not (imported & (stage_modules - {module})), f"{module} imports a stage: {imported & stage_modules}"
    # config imports nothing of the project but the leaf module of its errors, which imports nothing at all.
    assert _project_imports(SRC / "config.py") <= {"lakesynth.errors"}
    assert _project_imports(SRC / "errors.py") == set()
    llm_imports = {m for f in _module_files("lakesynth.llm") for m in _project_imports(f)}
    assert not {m for m in llm_imports if m == "lakesynth.core.tables"}, "the llm package does not import tables"
    assert not {m for m in _project_imports(SRC / "core" / "tables.py") if m.startswith("lakesynth.llm")}


def test_only_the_runtime_and_config_read_the_environment():
    readers = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if re.search(r"os\.environ(?!\.setdefault)|os\.getenv|environ\.get", text):
            readers.add(path.name)
    # config reads the named API-key variable; runtime answers "where am I"; the stand-in is a test double.
    assert readers <= {"config.py", "runtime.py"}, readers
