"""Fault tests: crash and resume, endpoint failures, planted secrets. Nothing lost, nothing paid twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import deltalake
import pytest
from conftest import ROOT
from test_cli import lakesynth

SECRET = "sk-lakesynth-PLANTED-7f3a9c"


def _args(tmp_path, server, *extra):
    return [
        "--warehouse",
        str(tmp_path / "wh"),
        "--set",
        f"endpoints.teacher.base_url={server.base_url}",
        "--set",
        "endpoints.teacher.model=standin",
        *extra,
    ]


def _table(tmp_path, name):
    path = tmp_path / "wh" / "main" / "lakesynth_dev" / name
    return deltalake.DeltaTable(str(path)).to_pandas() if (path / "_delta_log").exists() else None


def _every_row_answered_or_erred(tmp_path):
    """The questions and answers tables, after checking that no seed or question was lost or duplicated."""
    seeds, questions, answers = (
        _table(tmp_path, n) for n in ("seed_questions", "synthetic_questions", "synthetic_responses")
    )
    assert set(questions.seed_id) == set(seeds.seed_id)  # every seed has its questions or its error row
    assert questions.question_id.is_unique and answers.question_id.is_unique
    ok_questions = questions[questions.error.isna()]
    assert set(answers.question_id) == set(ok_questions.question_id)  # every question answered or erred
    return questions, answers


def test_sigkill_halfway_then_rerun_loses_nothing_and_repays_only_in_flight(tmp_path, teacher_server):
    teacher_server.reset(latency_ms=40, fault_rate=0.0)
    assert lakesynth("run", "--stages", "seed,questions", *_args(tmp_path, teacher_server)).returncode == 0
    n_questions = len(_table(tmp_path, "synthetic_questions"))
    concurrency = 4
    teacher_server.reset(latency_ms=40)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lakesynth.cli",
            "responses",
            *_args(tmp_path, teacher_server),
            "--set",
            "mlflow.enabled=false",
            "--set",
            f"endpoints.teacher.max_concurrency={concurrency}",
            "--set",
            "llm.journal_flush_s=0",  # a file per request: the kill loses only what was in flight
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while teacher_server.stats.completions < n_questions // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    paid_before_kill = teacher_server.stats.requests
    assert n_questions // 2 <= paid_before_kill < n_questions, "the kill must land halfway"
    assert len(_table(tmp_path, "synthetic_responses")) == 0  # created empty before the first call; no row merged
    teacher_server.reset(latency_ms=0)
    rerun = lakesynth("responses", *_args(tmp_path, teacher_server))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    new_requests = teacher_server.stats.requests
    # Only what the killed run had in flight (sent, not yet journaled) is requested again: at most its
    # concurrency. Each run also sent one one-token preflight, which is never journaled.
    repaid = new_requests - 1 - (n_questions - (paid_before_kill - 1))
    assert 0 <= repaid <= concurrency
    rows = _table(tmp_path, "synthetic_responses")
    assert len(rows) == n_questions and rows.question_id.is_unique  # none lost, none duplicated
    assert rows.error.isna().all()
    assert not list((tmp_path / "wh").rglob("_journal/*/*.jsonl"))  # journal cleared once written


@pytest.mark.parametrize(
    "options, message",
    [
        ({"api_key": "the-right-key"}, "answered 401: the token or API key is missing, wrong or expired"),
        ({"models": ("something-else",)}, "answered 404: no model or endpoint named 'standin'"),
        ({"reject_schema": True}, "answered 400"),
    ],
)
def test_endpoint_failures_stop_the_stage_before_any_row(tmp_path, teacher_server, options, message):
    teacher_server.reset(**options)
    os.environ["LAKESYNTH_TEST_KEY"] = SECRET
    proc = lakesynth(
        "run",
        *_args(
            tmp_path,
            teacher_server,
            "--set",
            "endpoints.teacher.api_key_env=LAKESYNTH_TEST_KEY",
            "--summary",
            str(tmp_path / "s.json"),
        ),
    )
    assert proc.returncode == 1
    assert message in proc.stdout and SECRET not in proc.stdout + proc.stderr
    stages = json.loads((tmp_path / "s.json").read_text())["stages"]
    assert stages["questions"]["status"] == "failed" and stages["responses"]["status"] == "skipped"
    assert len(_table(tmp_path, "synthetic_questions")) == 0  # created empty before the preflight; no row
    assert teacher_server.stats.requests == 1  # the driver's preflight, and nothing else


def test_unreachable_endpoint_is_named(tmp_path):
    proc = lakesynth(
        "run",
        "--warehouse",
        str(tmp_path / "wh"),
        "--set",
        "endpoints.teacher.base_url=http://127.0.0.1:9/v1",
        "--set",
        "endpoints.teacher.max_retries=0",
    )
    assert proc.returncode == 1 and "cannot reach the teacher at http://127.0.0.1:9/v1" in proc.stdout
    assert len(_table(tmp_path, "synthetic_questions")) == 0  # created empty before the preflight; no row


@pytest.mark.slow
def test_planted_secret_never_leaks(tmp_path, teacher_server):
    teacher_server.reset(api_key=SECRET, fault_rate=0.3, faults=("500", "schema", "429"), seed=9)
    os.environ["LAKESYNTH_TEST_KEY"] = SECRET
    proc = lakesynth(
        "run",
        "-v",
        *_args(
            tmp_path,
            teacher_server,
            "--set",
            "endpoints.teacher.api_key_env=LAKESYNTH_TEST_KEY",
            "--set",
            "endpoints.teacher.max_retries=0",
            "--set",
            "questions.max_failure_rate=1",
            "--set",
            "responses.max_failure_rate=1",
            "--set",
            "finetune.max_steps=1",
            "--set",
            "finetune.max_length=64",
            "--set",
            "finetune.val_examples=2",
            "--set",
            "evaluate.max_failure_rate=1",
            "--set",
            "evaluate.max_examples=3",
            "--set",
            "evaluate.max_new_tokens=16",
            "--set",
            "questions.per_seed=1",  # a third of the rows, each stage still runs on some
            "--summary",
            str(tmp_path / "s.json"),
        ),
        tracking=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert teacher_server.stats.completions > 0  # the key worked, so it really was sent
    haystacks = [proc.stdout, proc.stderr, (tmp_path / "s.json").read_text()]
    tables = ("seed_questions", "synthetic_questions", "synthetic_responses", "training_chat", "student_evaluation")
    for name in tables:
        haystacks.append(_table(tmp_path, name).to_json())
    haystacks += [
        p.read_text(errors="replace")
        for p in (tmp_path / "wh").rglob("*")
        if p.is_file() and p.suffix in (".json", ".jsonl", ".txt", ".log")
    ]
    assert all(SECRET not in h for h in haystacks)
    assert any("error" in h for h in haystacks[3:])  # failed rows were recorded, without the key


def test_twenty_percent_faults_of_every_kind_through_both_llm_stages(tmp_path, teacher_server):
    teacher_server.reset(fault_rate=0.2, seed=21, timeout_sleep_s=1.0)
    proc = lakesynth(
        "run",
        "--stages",
        "seed,questions,responses",
        *_args(
            tmp_path,
            teacher_server,
            "--set",
            "endpoints.teacher.max_retries=1",
            "--set",
            "endpoints.teacher.timeout_s=0.5",
            "--summary",
            str(tmp_path / "s.json"),
        ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(teacher_server.stats.faults) == {"429", "500", "timeout", "malformed", "schema", "truncated"}
    questions, answers = _every_row_answered_or_erred(tmp_path)
    failed = answers[answers.error.notna()]
    assert len(failed) > 0 and failed.answer.isna().all()


def test_row_failures_of_every_kind_stay_in_their_rows_through_both_llm_stages(tmp_path, teacher_server):
    """409s, 5xx and dropped connections are retried; a prompt over the context length (400), a 413 and a 422
    fail their row at once. Either way the row is written with its error, and nothing stops the stage."""
    teacher_server.reset(fault_rate=0.25, faults=("409", "413", "422", "400_context", "reset", "500"), seed=33)
    proc = lakesynth(
        "run",
        "--stages",
        "seed,questions,responses",
        *_args(
            tmp_path, teacher_server, "--set", "endpoints.teacher.max_retries=2", "--summary", str(tmp_path / "s.json")
        ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert set(teacher_server.stats.faults) == {"409", "413", "422", "400_context", "reset", "500"}
    questions, answers = _every_row_answered_or_erred(tmp_path)
    assert answers.answer.notna().sum() > 0 and answers[answers.error.notna()].answer.isna().all()
    errors = list(questions.error.dropna()) + list(answers.error.dropna())
    kinds = {e.split(":")[0] for e in errors}
    assert {"BadRequestError", "RequestTooLargeError", "UnprocessableEntityError"} <= kinds
    assert any("context_length_exceeded" in e for e in errors)
