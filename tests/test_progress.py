"""Issue 27: a run you can watch and stop. Without a terminal an LLM stage prints plain progress lines; Ctrl-C ends
the run within seconds, and the rerun pays only for what was not finished."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import deltalake
import mlflow

from lakesynth.core import estimate, registry
from lakesynth.core.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^questions: (\d+)/(\d+) done, (\d+) errors, [\d.]+ req/s")


def run_args(server, tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "lakesynth.cli", "run", "--stages", "seed,questions",
        "--warehouse", str(tmp_path / "wh"), "--set", f"endpoints.teacher.base_url={server.base_url}",
        "--set", "endpoints.teacher.model=standin", "--set", "mlflow.enabled=false", *extra,
    ]  # fmt: skip


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def saved_estimate(tmp_path: Path, *overrides: str) -> float:
    """An estimate saved beside the run's tables as a preview of 2 of its 24 seeds would, each questions request
    0.5 s; its seconds per request at the run's concurrency."""
    cfg = registry.load_config(ROOT / "conf/lakesynth.yml", [f"warehouse={tmp_path / 'wh'}", *overrides])
    used = {"endpoint": "teacher", "model": "standin", "requests": 2, "latency_ms": 1000}
    summary = {"usage": {"questions": {**used, "prompt_tokens": 400, "completion_tokens": 200}}}
    made = estimate.build(cfg, job="lakesynth", summary=summary, n=2, units=24, unit="seeds", examples=0)
    estimate.save(Runtime.resolve(cfg), made)
    return made["stages"]["questions"]["wall_s"] / made["stages"]["questions"]["requests"]


def test_a_stage_with_its_output_piped_prints_progress_lines(tmp_path, teacher_server):
    # 24 requests, two at a time, 0.25 s each: about 3 s of requests, a line every 0.4 s.
    teacher_server.reset(latency_ms=250)
    args = run_args(teacher_server, tmp_path, "--set", "endpoints.teacher.max_concurrency=2")
    args += ["--set", "llm.progress_s=0.4"]
    per_request = saved_estimate(tmp_path, "endpoints.teacher.max_concurrency=2")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env(), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [m for m in map(LINE.match, proc.stderr.splitlines()) if m]
    assert len(lines) >= 4, proc.stderr
    done = [int(m[1]) for m in lines]
    assert done == sorted(done) and all(int(m[2]) == 24 for m in lines)
    assert (lines[-1][1], lines[-1][3]) == ("24", "0")  # the last: done = total, no errors
    assert "ETA" in " ".join(m.string for m in lines if 0 < int(m[1]) < 24)
    guesses = [(int(m[1]), re.search(r"\(estimate (\d+) s\)", m.string)) for m in lines if int(m[1]) < 24]
    assert guesses and all(g and int(g[1]) == round((24 - done) * per_request) for done, g in guesses), proc.stderr


def test_ctrl_c_ends_the_run_within_seconds_and_the_rerun_pays_only_what_had_not_finished(tmp_path, teacher_server):
    teacher_server.reset(latency_ms=200)  # 24 requests two at a time: about 2.4 s of them
    args = run_args(teacher_server, tmp_path, "--set", "endpoints.teacher.max_concurrency=2")
    tracked = [*args, "--set", "mlflow.enabled=true"]  # the interrupted run only: its MLflow run says KILLED
    proc = subprocess.Popen(tracked, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 120
    while teacher_server.stats.completions < 6 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10 and proc.returncode == 130, err
    assert err.count("interrupted: finished requests are kept") == 1, err
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # beside the warehouse
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [(r.info.status, r.data.tags["stage.questions"]) for r in runs] == [("KILLED", "interrupted")]
    rt = Runtime.resolve(registry.load_config(ROOT / "conf/lakesynth.yml", [f"warehouse={tmp_path / 'wh'}"]))
    logged = deltalake.DeltaTable(rt.table_location("run_log")).to_pandas().set_index("task")
    assert logged.loc["seed", "status"] == "ok" and logged.loc["questions", "status"] == "stopped"
    assert "Ctrl-C" in logged.loc["questions", "reason"] and logged.loc["questions", "seconds"] > 0
    assert logged.loc["questions", "run_id"] == logged.loc["seed", "run_id"] == runs[0].data.tags["lakesynth.run_id"]
    interrupted = teacher_server.stats.requests
    assert interrupted < 20  # it stopped: 24 questions requests and a preflight make a whole run

    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env(), check=False)
    assert rerun.returncode == 0 and "questions: ok, 24 in, 72 out, 0 errors" in rerun.stdout, rerun.stderr
    paid = teacher_server.stats.requests

    teacher_server.reset()
    whole = run_args(teacher_server, tmp_path / "whole")
    assert subprocess.run(whole, cwd=ROOT, capture_output=True, timeout=300, env=env(), check=False).returncode == 0
    # Every request paid once over both runs, but the rerun's preflight and the two that were in flight.
    assert teacher_server.stats.requests <= paid <= teacher_server.stats.requests + 1 + 2


def test_ctrl_c_ends_a_preview_within_seconds_and_removes_its_scratch_schema(tmp_path, teacher_server):
    teacher_server.reset(latency_ms=500)  # the second pass's 2 questions and 9 answers, two at a time: about 3 s
    args = run_args(teacher_server, tmp_path, "--set", "endpoints.teacher.max_concurrency=2")
    args[args.index("run") : args.index("run") + 3] = ["preview", "-n", "3", "--out", str(tmp_path / "p.md")]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 120
    while teacher_server.stats.completions < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first pass's question and answer are in: the second pass is asking
    assert proc.poll() is None, "the preview ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10 and proc.returncode == 130, err
    assert err.count("interrupted: the preview's scratch schema is removed") == 1, err
    catalog = next((tmp_path / "wh").iterdir())
    assert not [p.name for p in catalog.iterdir() if "_preview_" in p.name]
