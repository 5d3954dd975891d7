"""`lakesynth run`: the job's tasks in order, the summary, reruns, and the real embedded teacher end to end."""

from __future__ import annotations

import json

import deltalake
import pytest
import yaml
from conftest import ROOT, write
from test_cli import lakesynth

from lakesynth import pipeline
from lakesynth.core import registry

# The Q&A job's tasks and what each depends on, read from the job file itself (not through pipeline).
_TASKS = yaml.safe_load((ROOT / "resources" / "lakesynth.job.yml").read_text())["resources"]["jobs"]["lakesynth"]
DEPENDS = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in _TASKS["tasks"]}
JOB = list(DEPENDS)


def _upstream(task: str) -> set[str]:
    return {d for dep in DEPENDS[task] for d in (dep, *_upstream(dep))}


# The taxonomy's branch, a seed source beside seed: it does not wait for it (each stage disabled when unset).
INPUTS = tuple(t for t in JOB if t != "seed" and "seed" not in _upstream(t))


def _summary(path):
    return json.loads(path.read_text())


def test_job_graph_is_read_from_the_bundle():
    graph = pipeline.job_graph(ROOT)
    order = pipeline.order(graph)
    assert sorted(order) == sorted(JOB) and all(order.index(d) < order.index(t) for t in JOB for d in DEPENDS[t])
    assert set(graph) <= set(registry.default_stages())


@pytest.mark.slow
def test_run_against_an_endpoint_then_rerun_pays_nothing(tmp_path, teacher_server):
    teacher_server.reset(fault_rate=0.0, latency_ms=5)
    args = [
        "run",
        "--warehouse",
        str(tmp_path / "wh"),
        "--set",
        f"endpoints.teacher.base_url={teacher_server.base_url}",
        "--set",
        "endpoints.teacher.model=standin",
        "--set",
        "finetune.max_steps=2",
        "--set",
        "finetune.max_length=64",
        "--set",
        "finetune.val_examples=4",
        "--set",
        "evaluate.max_examples=3",
        "--set",
        "evaluate.max_new_tokens=16",
        "--summary",
        str(tmp_path / "s.json"),
    ]
    proc = lakesynth(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _summary(tmp_path / "s.json")
    assert list(report["stages"]) == pipeline.order(pipeline.job_graph(ROOT)) and sorted(report["stages"]) == sorted(
        JOB
    )
    assert set(report["files"]) == {"train_jsonl", "val_jsonl", "adapter"}
    assert report["stages"]["finetune"]["val_loss_before"] > 0
    assert all(s["status"] == "ok" for s in report["stages"].values())
    questions = report["tables"]["synthetic_questions"]["rows"]
    assert report["tables"]["synthetic_responses"]["rows"] == questions == 3 * 24
    evaluated = report["stages"]["evaluate"]
    assert evaluated["examples"] == evaluated["judged"] == 3 and 0 <= evaluated["win_rate"] <= 1
    paid = teacher_server.stats.completions
    assert paid == 24 + questions + 3 + 3  # every request once, plus one preflight per LLM stage
    again = lakesynth(*args)
    assert again.returncode == 0 and teacher_server.stats.completions == paid
    assert "questions: ok, 24 in (24 already done), 0 new, 0 errors" in again.stdout
    assert _summary(tmp_path / "s.json")["stages"]["evaluate"]["generated"] == 0  # nor a student's answer
    # Same data, same settings: the fine-tune is not paid for twice either.
    rerun = _summary(tmp_path / "s.json")["stages"]["finetune"]
    assert (
        rerun["reused"]
        and rerun["rows_out"] == 0
        and rerun["val_loss_after"] == report["stages"]["finetune"]["val_loss_after"]
    )


def test_a_running_spark_connect_server_replaces_the_embedded_engine(tmp_path, teacher_server):
    """LAKESYNTH_SPARK_REMOTE: the stages run on a separate Sail server (UDFs included), tables land on disk."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sail = Path(sys.executable).with_name("sail")
    server = subprocess.Popen([str(sail), "spark", "server", "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as conn:
                if conn.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        proc = lakesynth(
            "run",
            "--stages",
            "seed,questions",
            "--warehouse",
            str(tmp_path / "wh"),
            "--set",
            f"endpoints.teacher.base_url={teacher_server.base_url}",
            "--set",
            "endpoints.teacher.model=standin",
            "--summary",
            str(tmp_path / "s.json"),
            env={"LAKESYNTH_SPARK_REMOTE": f"sc://127.0.0.1:{port}"},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        location = _summary(tmp_path / "s.json")["tables"]["synthetic_questions"]["location"]
        assert len(deltalake.DeltaTable(location).to_pandas()) == 3 * 24
        assert server.poll() is None  # the server outlives the command: it was not lakesynth's to stop
        server.terminate()
        server.wait(10)
        gone = lakesynth(
            "seed", "--warehouse", str(tmp_path / "wh"), env={"LAKESYNTH_SPARK_REMOTE": f"sc://127.0.0.1:{port}"}
        )
        assert gone.returncode == 2 and "no Spark Connect server answers there" in gone.stderr
    finally:
        server.terminate()
        server.wait(10)


def test_stages_subset_and_unknown_stage(tmp_path):
    proc = lakesynth(
        "run", "--stages", "seed", "--warehouse", str(tmp_path / "wh"), "--summary", str(tmp_path / "s.json")
    )
    assert proc.returncode == 0 and list(_summary(tmp_path / "s.json")["stages"]) == ["seed"]
    bad = lakesynth("run", "--stages", "seed,polish", "--warehouse", str(tmp_path / "wh"))
    assert bad.returncode == 2 and "unknown stage(s) polish" in bad.stderr


def test_failed_stage_skips_its_dependents(tmp_path):
    bad = write(tmp_path / "bad.jsonl", "not json\n")
    proc = lakesynth(
        "run", "--seeds", bad, "--warehouse", str(tmp_path / "wh"), "--summary", str(tmp_path / "s.json"), tracking=True
    )
    stages = _summary(tmp_path / "s.json")["stages"]
    assert proc.returncode == 1
    assert stages["seed"]["status"] == "failed" and "bad.jsonl: not JSON Lines" in stages["seed"]["error"]
    assert all(stages[s]["status"] == "skipped" for s in JOB if s not in (*INPUTS, "seed"))
    assert all(stages[s]["status"] == "ok" and "disabled" in stages[s] for s in INPUTS)


@pytest.mark.slow
def test_end_to_end_with_the_real_embedded_teacher(tmp_path):
    """No endpoint configured: the packaged model writes questions and answers (a tiny sample)."""
    seeds_file = write(
        tmp_path / "tiny.csv",
        "topic,question,in_scope\n"
        "cards,How do I block my debit card?,yes\n"
        "investment advice,Should I buy gold with my savings?,no\n",
    )
    # Short rules: the 0.5B teacher reads prompts at ~120 tokens/s on 2 cores, and the sample's rules are 1.5k chars.
    rules = write(
        tmp_path / "rules.md",
        "Northwind Bank customer service. In scope: cards, accounts, payments, fraud. "
        "Out of scope: investment, tax and legal advice: decline politely and suggest a professional.\n",
    )
    proc = lakesynth(
        "run",
        "--seeds",
        seeds_file,
        "--set",
        f"use_case.rules_file={rules}",
        "--warehouse",
        str(tmp_path / "wh"),
        "--set",
        "questions.per_seed=2",
        "--set",
        "responses.max_tokens=400",
        "--set",
        "endpoints.teacher.embedded_slots=4",
        # One llama.cpp thread: make test runs two workers on two cores, and the teacher's threads spin while the
        # other worker holds a core (311 s in the suite with both cores, alone 87 s; one thread: 102 s alone).
        "--set",
        "endpoints.teacher.embedded_threads=1",
        # A reply cut at max_tokens is retried (max_retries, 3): four more 400-token answers took 250 s where none
        # took 60. Here a cut reply is its row's error at once, which the test accepts as it accepts any error.
        "--set",
        "endpoints.teacher.max_retries=0",
        "--set",
        "finetune.max_steps=2",
        "--set",
        "finetune.max_length=128",
        # The 0.5B teacher's side-by-side judgement runs to ~1k tokens (minutes on 2 cores): the evaluate stage is
        # tested on the stand-in (test_evaluate.py), and with this teacher by hand (README, "Two commands").
        "--set",
        "evaluate.enabled=false",
        "--summary",
        str(tmp_path / "s.json"),
    )
    report = _summary(tmp_path / "s.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    q = deltalake.DeltaTable(report["tables"]["synthetic_questions"]["location"]).to_pandas()
    r = deltalake.DeltaTable(report["tables"]["synthetic_responses"]["location"]).to_pandas()
    ok = q[q.error.isna()]
    assert len(ok) > 0
    # Every seed has questions or its error row; a real model may repeat itself, and fewer than
    # per_seed usable questions is then reported, not hidden.
    assert set(q.seed_id) == set(ok.seed_id) | set(q[q.error.notna()].seed_id)
    per_seed = ok.groupby("seed_id").size()
    assert (per_seed <= 2).all(), per_seed
    assert report["stages"]["questions"]["seeds_short"] == int((per_seed < 2).sum())
    assert set(r.question_id) == set(ok.question_id)  # an answer or an error for every question
    assert r.apply(lambda x: (x.error is None) == bool(x.answer), axis=1).all()
    assert (q.model == "qwen2.5-coder-0.5b-instruct").all()
    assert report["stages"]["finetune"]["status"] == "ok" and report["files"]["adapter"]  # a fine-tuned student


def test_only_a_failure_stops_the_stages_after_it():
    """A failed stage stops its dependents, and theirs, naming the failure; a check skipped for want of its input
    (no implementations) and a stage that writes no table (the fine-tune, off) let the job go on; a skipped stage
    that writes the rows the next one reads leaves it nothing to work on, and says so."""
    graph, registered = pipeline.job_graph(ROOT, "lakesynth_tools"), registry.default_stages()

    def stopped(key: str, done: dict) -> str:
        return pipeline._stopped(graph[key][1], done, graph, registered)

    failed = {"call_format": {"status": "failed", "error": "boom"}}
    assert stopped("call_execution", failed) == "call_format failed"
    chained = {"call_execution": {"status": "skipped", "reason": "call_format failed", "stopped": True}}
    assert stopped("trajectories", chained) == "call_format failed"  # the stage after call_execution
    no_code = {"call_execution": {"status": "skipped", "reason": "not run: no implementations"}}
    assert stopped("trajectories", no_code) == ""
    assert stopped("tool_evaluate", {"finetune": {"status": "skipped", "reason": "finetune.backend is none"}}) == ""
    no_spec = {"tools": {"status": "skipped", "reason": "no tools spec"}}
    assert stopped("call_generation", no_spec) == "nothing to work on: tools skipped: no tools spec"
    # A stage skipped after a skipped dependency names that cause, unless it already says it.
    extra = {"finetune": {"status": "skipped", "reason": "the training extra is not installed"}}
    assert (
        pipeline._with_upstream("no fine-tuned adapter here", ["finetune"], extra)
        == "no fine-tuned adapter here (finetune skipped: the training extra is not installed)"
    )
    off = {"finetune": {"status": "skipped", "reason": "finetune.backend is none"}}
    said = "no fine-tune to evaluate: finetune.backend is none"
    assert pipeline._with_upstream(said, ["finetune"], off) == said
