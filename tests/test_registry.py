"""The stage registry: one declaration per stage, and everything derived from it agrees with the bundle."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from lakesynth import cli
from lakesynth import pipeline
from lakesynth.core import registry
from lakesynth.config import Config
from lakesynth.errors import ConfigError
from lakesynth.core.stage import Stage
from lakesynth.core.tables import Table

SRC = ROOT / "src" / "lakesynth"


def _lakesynth(*args):
    return subprocess.run(
        [sys.executable, "-m", "lakesynth.cli", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_every_stage_module_declares_one_stage_with_its_tables_and_config():
    stages = registry.default_stages()
    qa = [
        "seed",  # first: dedup reads seed_questions (each verdict's source_id), which ties break on
        "documents",
        "questions",
        "taxonomy",  # after documents, whose folder it resolves patterns against; nothing links it to seed yet
        "critic",
        "leaf_generation",
        "responses",
        "grounding",
        "judge",
        "relevance",
        "leaf_topup",  # after grounding, whose verdicts it reads; it writes through leaf_generation and grounding
        "dedup",
        "format",
        "topup",  # it writes through other stages, so data flow alone places it anywhere after dedup
        "preference",
        "export",
        "finetune",  # after format, preference and tool_format, whose files it reads; the evaluations after it
        "evaluate",
    ]
    function_calling = ["tools", "call_generation", "calls", "call_format", "call_execution", "call_semantic"]
    function_calling += ["call_relevance", "call_verdicts"]
    function_calling += ["tool_format", "tool_export", "tool_evaluate"]
    assert set(stages) == set(qa + function_calling)
    assert list(stages).index("finetune") > list(stages).index("tool_format")
    for flow in (qa, function_calling):  # each job's stages in data-flow order (the two jobs interleave)
        assert [s for s in stages if s in flow] == flow
    for stage in stages.values():
        assert isinstance(stage, Stage) and stage.help and callable(stage.run)
        assert all(isinstance(t, Table) for t in stage.writes)
    # Every table a stage reads is written by some registered stage.
    written = set(registry.contracts(stages))
    assert {t for s in stages.values() for t in s.reads} <= written
    # The config model has one section per stage that declares one, under its key.
    fields = registry.config_model().model_fields
    assert {"seed", "questions", "responses", "format", "finetune", "quality"} <= set(fields)
    assert registry.load_config(ROOT / "conf" / "lakesynth.yml").quality.critic.enabled is False
    assert issubclass(registry.config_model(), Config)


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
    parser = cli._parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"run", "stages", *registry.default_stages()}
    shown = _lakesynth("--help").stdout
    for name, stage in registry.default_stages().items():
        assert re.search(rf"^\s+{name}\b", shown, re.M), name


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
    assert not {m for m in _project_imports(SRC / "tables.py") if m.startswith("lakesynth.llm")}


def test_only_the_runtime_and_config_read_the_environment():
    readers = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if re.search(r"os\.environ(?!\.setdefault)|os\.getenv|environ\.get", text):
            readers.add(path.name)
    # config reads the named API-key variable; runtime answers "where am I"; the stand-in is a test double.
    assert readers <= {"config.py", "runtime.py"}, readers
