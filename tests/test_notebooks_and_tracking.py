"""The notebooks execute headless against a small run, and each run is one MLflow run with its metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient
from test_cli import lakesynth

from lakesynth.standin import StandIn, StandInOptions

SECRET = "sk-lakesynth-PLANTED-mlflow-77"


def _run_on_standin(tmp: Path, *args: str, tracking: bool) -> None:
    """A pipeline run on the stand-in (fine-tune off), its key planted in the environment; `{server}` in an
    argument is the stand-in's URL."""
    server = StandIn(StandInOptions(api_key=SECRET)).start()
    os.environ["LAKESYNTH_NB_KEY"] = SECRET
    try:
        proc = lakesynth(
            "run",
            "--warehouse",
            str(tmp / "wh"),
            "--set",
            f"teacher.base_url={server.base_url}",
            "--set",
            "teacher.model=standin",
            "--set",
            "teacher.api_key_env=LAKESYNTH_NB_KEY",
            "--set",
            "finetune.backend=none",
            *[arg.format(server=server.base_url) for arg in args],
            tracking=tracking,
        )
    finally:
        del os.environ["LAKESYNTH_NB_KEY"]
        server.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One tracked run with the critic, judge and relevance check on (so the report's quality gate has verdicts to
    show; the stand-in's relevance scores lie around 0.84), shared by these tests."""
    tmp = tmp_path_factory.mktemp("small_run")
    _run_on_standin(
        tmp,
        "--run-id",
        "nb-run",
        "--set",
        "quality.critic.enabled=true",
        "--set",
        "quality.judge.enabled=true",
        "--set",
        "quality.relevance.enabled=true",
        "--set",
        "quality.relevance.threshold=0.84",
        "--set",
        "quality.relevance.embeddings.base_url={server}",
        "--set",
        "quality.relevance.embeddings.api_key_env=LAKESYNTH_NB_KEY",
        "--summary",
        str(tmp / "s.json"),
        tracking=True,
    )
    return tmp


def _execute(name: str, warehouse: Path, *overrides: str) -> list:
    """The notebook executed headless on `warehouse`; its cells' outputs, none of them an error."""
    book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    (params,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = (
        f"config_path = {str(ROOT / 'conf' / 'lakesynth.yml')!r}\n"
        f"overrides = {[f'warehouse={warehouse}', 'mlflow.enabled=false', *overrides]!r}"
    )
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    return outputs


def _text(outputs: list) -> str:
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)


def _images(outputs: list) -> list[str]:
    return [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("name", ["01_explore_seeds", "02_inspect_generations"])
def test_notebook_runs_headless(small_run, name):
    outputs = _execute(name, small_run / "wh")
    assert any(o.output_type == "execute_result" for o in outputs)


def test_the_dataset_report_shows_each_figure_once_and_the_quality_gate(small_run):
    outputs = _execute("03_dataset_report", small_run / "wh")
    images = _images(outputs)
    # topics, lengths, splits, kept/dropped per reason, scores; each once (no error chart: there are no errors)
    assert len(images) == len(set(images)) == 5
    text = _text(outputs)
    assert "No errors" in text
    for check in ("critic", "judge", "relevance"):
        assert re.search(rf"^{check}: [1-9]\d* dropped$", text, re.M)
    assert "dedup: 0 dropped as duplicates" in text and " is off" not in text
    # The drop-reason table, and a few rejected rows per reason with the check's reasoning.
    for reason in ("kept", "critic", "judge:quality", "judge:scope", "relevance"):
        assert re.search(rf"^{reason} +\w* +\d+ +\d+%$", text, re.M), reason
    assert text.count("Stand-in reasoning") >= 6 and "score 1: Stand-in reasoning" in text
    assert "the answer reads as answering: Stand-in questions" in text


def test_the_dataset_report_says_so_when_the_checks_are_off(small_run):
    _run_on_standin(small_run, "--schema", "gate_off", tracking=False)  # the checks but dedup off, as by default
    outputs = _execute("03_dataset_report", small_run / "wh", "schema=gate_off")
    images = _images(outputs)
    assert len(images) == len(set(images)) == 3  # topics, lengths, splits: no empty chart for the quality gate
    text = _text(outputs)
    assert "critic: off" in text and "The judge is off" in text and "The relevance check is off" in text
    assert "Nothing dropped: all 72 answered pairs kept." in text and "No rejected rows." in text


def test_a_notebook_runs_from_the_workspace_files_the_bundle_syncs(small_run, tmp_path):
    """As on Databricks: notebooks/ beside src/, conf/ and pyproject.toml, cwd the notebook's folder, and no
    lakesynth installed (a sitecustomize drops the editable checkout from the kernel's path)."""
    files = tmp_path / "files"
    for name in ("notebooks", "src", "conf"):
        shutil.copytree(ROOT / name, files / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", files)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        f"import sys\nsys.path[:] = [p for p in sys.path if p != {str(ROOT / 'src')!r}]\n"
    )
    book = nbformat.read(files / "notebooks" / "01_explore_seeds.ipynb", as_version=4)
    (params,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = params.source.replace(
        "overrides = []", f"overrides = ['warehouse={small_run / 'wh'}', 'mlflow.enabled=false']"
    )
    assert "warehouse=" in params.source
    book.cells.append(nbformat.v4.new_code_cell("import lakesynth\n\nprint(lakesynth.__file__)"))
    NotebookClient(
        book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(files / "notebooks")}}
    ).execute(env={**os.environ, "PYTHONPATH": str(shim)})
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    loaded = book.cells[-1].outputs[0].text.strip()
    assert Path(loaded).is_relative_to(files / "src"), loaded


def test_one_mlflow_run_per_pipeline_run_with_stage_metrics(small_run):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{small_run / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("lakesynth")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["lakesynth.run_id"] == "nb-run"
    metrics = run.data.metrics
    for stage in ("seed", "questions", "responses", "format"):
        assert metrics[f"{stage}.rows_out"] > 0 and f"{stage}.seconds" in metrics
    assert metrics["questions.prompt_tokens"] > 0 and metrics["responses.errors"] == 0
    # Each check's verdicts: kept, and dropped per reason (`judge:scope` as `judge_scope`).
    assert metrics["critic.kept"] + metrics["critic.dropped"] == metrics["critic.rows_out"]
    assert metrics["judge.dropped.judge_scope"] > 0 and metrics["judge.dropped.judge_quality"] > 0
    assert metrics["judge.dropped"] == metrics["judge.dropped.judge_scope"] + metrics["judge.dropped.judge_quality"]
    assert metrics["relevance.dropped.relevance"] > 0
    assert metrics["dedup.kept"] == metrics["format.rows_in"] > 0
    assert metrics["dedup.dropped"] == metrics["judge.dropped"] + metrics["dedup.dropped.relevance"] > 0
    assert run.data.tags["stage.finetune"] == "skipped"
    params = run.data.params
    assert params["teacher.model"] == "standin" and params["teacher.api_key_env"] == "LAKESYNTH_NB_KEY"
    assert "questions.template_sha" in params and "questions.template" not in params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "report"} <= artifacts and "summary-nb-run.json" in artifacts
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert report == {"report/topics.png", "report/lengths.png", "report/errors.png", "report/splits.png"}
    quality = {a.path.removeprefix("quality/") for a in client.list_artifacts(run.info.run_id, "quality")}
    checks = {"critic": "question_verdicts", "judge": "answer_verdicts", "relevance": "relevance_verdicts"}
    drop_reasons = {f"{check}_drop_reasons.json" for check in (*checks, "dedup")}
    assert quality == drop_reasons | {f"{table}_scores.png" for table in checks.values()}
    judged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/quality/judge_drop_reasons.json")
    assert judged["dropped"]["judge:scope"] == metrics["judge.dropped.judge_scope"]
    # A later task of the same job run logs into the same MLflow run.
    again = lakesynth(
        "run", "--stages", "format", "--warehouse", str(small_run / "wh"), "--run-id", "nb-run", tracking=True
    )
    assert again.returncode == 0
    assert len(client.search_runs([experiment.experiment_id])) == 1
    # The planted key is nowhere in the tracking store or its artifacts.
    stored = [
        p.read_bytes()
        for p in small_run.rglob("*")
        if p.is_file() and ("mlartifacts" in str(p) or p.name == "mlflow.db")
    ]
    assert stored and all(SECRET.encode() not in blob for blob in stored)
    assert SECRET not in json.dumps(params)


def test_run_log_has_one_row_per_stage_run_for_sql_without_mlflow(spark, llm_cfg):
    """Which runs, stages, models and prompts made this dataset: one run_log row per task, replaced on a rerun."""
    from conftest import where

    from lakesynth import pipeline, tracking

    cfg = llm_cfg.model_copy(update={"finetune": llm_cfg.finetune.model_copy(update={"backend": "none"})})
    summary = pipeline.run(cfg, ["seed", "questions", "responses", "format", "finetune"], root=ROOT)
    assert summary["tables"]["run_log"]["rows"] == 5
    log = {r.task: r for r in spark.table(where(cfg).fqn("run_log")).collect()}
    assert {t: r.status for t, r in log.items()} == {
        "seed": "ok", "questions": "ok", "responses": "ok", "format": "ok", "finetune": "skipped"
    }  # fmt: skip
    q = log["questions"]
    assert q.run_id == cfg.run_id and q.model == "standin" and q.rows_in == 24 and q.prompt_tokens > 0
    assert len(q.prompt_version) == 12 and json.loads(q.parameters)["per_seed"] == "3"
    assert "template_sha" in json.loads(q.parameters)  # long texts as hashes
    assert json.loads(log["format"].files)["train_jsonl"].endswith("train.jsonl")
    assert json.loads(log["format"].metrics)["val_examples"] == summary["stages"]["format"]["val_examples"]
    assert log["finetune"].reason == "finetune.backend is none"
    pipeline.run(cfg, ["format"], root=ROOT)  # a rerun of a task in the same run replaces its row
    assert spark.table(where(cfg).fqn("run_log")).count() == 5
    assert tracking.RUN_LOG.name == "run_log"
