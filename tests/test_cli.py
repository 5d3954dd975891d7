"""The `lakesynth` command as outside scripts use it: flags, summary JSON, exit codes, persistence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import deltalake
from conftest import ROOT, write

from lakesynth.core import registry
from lakesynth.core.engine import register_tables
from lakesynth.qa import seed as seeds


def lakesynth(*args, cwd=ROOT, env=None, tracking=False):
    """`lakesynth ARGS` in a process of its own. MLflow tracking costs ~3 s a process, so it is off unless the
    test is about tracking (`tracking=True`); tests/test_notebooks_and_tracking.py covers it."""
    running = args and args[0] in ("run", *registry.default_stages())
    extra = ["--set", "mlflow.enabled=false"] if running and not tracking else []
    return subprocess.run(
        [sys.executable, "-m", "lakesynth.cli", *args, *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_seed_stage_writes_delta_readable_by_another_reader_and_session(tmp_path, spark):
    warehouse = tmp_path / "wh"
    summary = tmp_path / "out" / "summary.json"
    proc = lakesynth("seed", "--warehouse", str(warehouse), "--schema", "cli", "--summary", str(summary))
    assert proc.returncode == 0, proc.stderr
    assert "seed: ok, 24 in, 24 out, 0 errors" in proc.stdout
    report = json.loads(summary.read_text())
    assert report["stages"]["seed"]["status"] == "ok" and report["stages"]["seed"]["rows_out"] == 24
    entry = report["tables"]["seed_questions"]
    assert entry["table"] == "main.cli.seed_questions" and entry["rows"] == 24
    # An independent Delta reader sees the same rows.
    assert len(deltalake.DeltaTable(entry["location"]).to_pandas()) == 24
    # A new Spark session (the test's own) finds the table written by the finished process.
    assert "main.cli.seed_questions" in register_tables(spark, str(warehouse))
    assert spark.table("main.cli.seed_questions").count() == 24
    # A second process adds nothing.
    again = lakesynth("seed", "--warehouse", str(warehouse), "--schema", "cli")
    assert again.returncode == 0 and "seed: ok, 24 in (24 already stored), 0 new, 0 errors" in again.stdout


def test_bad_seed_file_exits_nonzero_with_named_error(tmp_path):
    bad = write(tmp_path / "bad.csv", "topic,question,in_scope\ncards,,yes\n")
    summary = tmp_path / "s.json"
    proc = lakesynth("run", "--seeds", bad, "--warehouse", str(tmp_path / "wh"), "--summary", str(summary))
    assert proc.returncode != 0
    assert "bad.csv" in proc.stdout and "empty question: row(s) 1" in proc.stdout
    report = json.loads(summary.read_text())
    assert report["stages"]["seed"]["status"] == "failed"
    assert not (tmp_path / "wh" / "main" / "lakesynth_dev" / seeds.TABLE.name).exists()  # checked before any table
    # One line names every stage the failure stopped, in run order (not one line per stage).
    stopped = [k for k, s in report["stages"].items() if s.get("stopped")]
    assert len(stopped) > 5 and stopped[0] == "questions"
    assert [line for line in proc.stdout.splitlines() if "seed failed" in line] == [
        f"not run (seed failed): {', '.join(stopped)}"
    ]


def test_bad_config_exits_2_naming_key(tmp_path):
    proc = lakesynth("run", "--set", "endpoints.teacher.max_concurrency=0", "--warehouse", str(tmp_path / "wh"))
    assert proc.returncode == 2
    assert "--set endpoints.teacher.max_concurrency" in proc.stderr and "Traceback" not in proc.stderr


TRAVEL = ROOT / "tests" / "fixtures" / "travel"  # a travel agency's tools: another spec than the bank sample's
GARDENING = ROOT / "tests" / "fixtures" / "gardening"  # a one-leaf taxonomy on gardening


def test_a_flag_naming_a_source_sets_aside_the_configs_sources_it_replaces():
    from lakesynth import cli
    from lakesynth.config import packaged_config

    tools_job = ["tools", "call_generation", "calls"]

    def configure(*argv, stages=("seed", "taxonomy")):
        return cli.configure(cli.parse_args(["run", "--config", str(packaged_config()), *argv]), list(stages))

    cfg, line = configure(
        "--tools", str(TRAVEL / "tools.json"), "--calls", str(TRAVEL / "calls.jsonl"), stages=tools_job
    )
    assert (cfg.tools.spec, cfg.tools.calls) == (str(TRAVEL / "tools.json"), str(TRAVEL / "calls.jsonl"))
    assert cfg.tools.functions == cfg.tools.seeds == ""  # the sample's, written for the sample's tools
    assert line == (
        f"sources --tools {TRAVEL / 'tools.json'}, --calls {TRAVEL / 'calls.jsonl'}; "
        "not used: the config's tools.functions, tools.seeds"
    )
    cfg, line = configure("--seeds", str(TRAVEL / "seeds.jsonl"), stages=tools_job)  # the sample's spec, own seeds
    assert cfg.tools.spec.endswith("tools/tools.json") and cfg.tools.functions and not cfg.tools.calls
    assert line.endswith("; not used: the config's tools.calls") and "tools.spec " in line and "(config)" in line
    cfg, _ = configure("--tools", str(TRAVEL / "tools.json"), "--set", f"tools.seeds={TRAVEL / 'seeds.jsonl'}",
                       stages=tools_job)  # fmt: skip
    assert cfg.tools.seeds == str(TRAVEL / "seeds.jsonl")  # a --set is the user's own: kept
    cfg, line = configure("--taxonomy", str(GARDENING))
    assert cfg.taxonomy.path == str(GARDENING) and cfg.seed.path == ""
    assert line.startswith(f"sources --taxonomy {GARDENING}; not used: the config's seed.path; use case 'bank'")
    assert "--set use_case.rules_file=" in line  # the sample's rules would shape the user's data: said so
    _, line = configure("--taxonomy", str(GARDENING), "--set", "use_case.system_prompt=Be a gardener.")
    assert line == f"sources --taxonomy {GARDENING}; not used: the config's seed.path"
    cfg, line = configure()  # no flag: the config's sources, said so
    assert cfg.seed.path.endswith("bank/seeds.csv") and line == f"sources seed.path {cfg.seed.path} (config)"


def _first_line(proc) -> str:
    return proc.stderr.splitlines()[0]


def test_another_spec_runs_the_tools_job_to_the_end_on_the_packaged_config(tmp_path, teacher_server):
    """From an empty folder (the packaged config and jobs), --tools/--functions/--calls of a travel agency's tools:
    the sample's seed pairs are not checked against them, nothing is generated, and every line gets its verdict."""
    teacher_server.reset()
    summary = tmp_path / "summary.json"
    proc = lakesynth(
        *("run", "--job", "lakesynth_tools", "--tools", str(TRAVEL / "tools.json")),
        *("--functions", str(TRAVEL / "functions.py"), "--calls", str(TRAVEL / "calls.jsonl")),
        *("--warehouse", str(tmp_path / "wh"), "--summary", str(summary)),
        *("--set", f"endpoints.teacher.base_url={teacher_server.base_url}", "--set", "endpoints.teacher.model=standin"),
        *("--set", "finetune.backend=none"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = _first_line(proc)
    assert (
        "config: domain-neutral default" in first and f"sources --tools {TRAVEL / 'tools.json'}, --functions" in first
    )
    assert first.endswith("; not used: the config's tools.seeds")
    stages = json.loads(summary.read_text())["stages"]
    assert stages["call_generation"]["disabled"].startswith("no seeds to generate from")
    assert stages["calls"]["generated"] == 0 and stages["calls"]["from_file"] == 8
    assert stages["tool_format"]["status"] == "ok" and stages["call_verdicts"]["rows_out"] == 8
    assert stages["call_verdicts"]["dropped"]["execution:ValueError"] == 1  # Madrid to Madrid, run and refused
    assert stages["finetune"] == {"status": "skipped", "reason": "finetune.backend is none"}
    assert stages["tool_evaluate"]["reason"] == "no fine-tune to evaluate: finetune.backend is none"
    assert "tool_evaluate: skipped: no fine-tune to evaluate: finetune.backend is none" in proc.stdout


def test_a_taxonomy_alone_is_the_only_seed_source_on_the_packaged_config(tmp_path, teacher_server):
    teacher_server.reset()
    summary = tmp_path / "summary.json"
    proc = lakesynth(
        *("run", "--taxonomy", str(GARDENING), "--warehouse", str(tmp_path / "wh"), "--summary", str(summary)),
        *("--set", f"endpoints.teacher.base_url={teacher_server.base_url}", "--set", "endpoints.teacher.model=standin"),
        *("--set", "taxonomy.per_leaf=3", "--set", "taxonomy.max_rounds=10", "--set", "finetune.backend=none"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = _first_line(proc)  # no config of its own: no domain's use case comes along, nothing to warn of
    assert "config: domain-neutral default" in first
    assert first.endswith(f"; sources --taxonomy {GARDENING}; not used: the config's seed.path")
    report = json.loads(summary.read_text())
    stages = report["stages"]
    assert stages["seed"]["disabled"].startswith("seed.path is empty")
    assert stages["questions"]["rows_out"] == 0 and stages["responses"]["rows_out"] == 0  # no bank question
    leaf = "compositional_skills/gardening/seasonal_tasks"
    examples = stages["format"]["examples_per_leaf"]
    assert list(examples) == [leaf] and examples[leaf] >= 3
    lines = [
        json.loads(line)
        for key in ("train_jsonl", "val_jsonl")
        for line in Path(report["files"][key]).read_text(encoding="utf-8").splitlines()
    ]
    assert len(lines) == examples[leaf]
    assert stages["evaluate"]["reason"] == "no fine-tune to evaluate: finetune.backend is none"
