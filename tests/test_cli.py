"""The `lakesynth` command as outside scripts use it: flags, summary JSON, exit codes, persistence."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import deltalake
from conftest import ROOT, write

from lakesynth import registry, seeds
from lakesynth.engine import register_tables


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
    assert again.returncode == 0 and "24 in, 0 out" in again.stdout


def test_bad_seed_file_exits_nonzero_with_named_error(tmp_path):
    bad = write(tmp_path / "bad.csv", "topic,question,in_scope\ncards,,yes\n")
    summary = tmp_path / "s.json"
    proc = lakesynth("run", "--seeds", bad, "--warehouse", str(tmp_path / "wh"), "--summary", str(summary))
    assert proc.returncode != 0
    assert "bad.csv" in proc.stdout and "empty question: row(s) 1" in proc.stdout
    report = json.loads(summary.read_text())
    assert report["stages"]["seed"]["status"] == "failed"
    assert (
        not (tmp_path / "wh" / "main" / "lakesynth_dev" / seeds.TABLE.name / "_delta_log").exists()
        or len(deltalake.DeltaTable(str(tmp_path / "wh/main/lakesynth_dev/seed_questions")).to_pandas()) == 0
    )


def test_bad_config_exits_2_naming_key(tmp_path):
    proc = lakesynth("run", "--set", "teacher.max_concurrency=0", "--warehouse", str(tmp_path / "wh"))
    assert proc.returncode == 2
    assert "--set teacher.max_concurrency" in proc.stderr and "Traceback" not in proc.stderr
