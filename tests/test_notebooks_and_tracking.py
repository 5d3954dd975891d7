"""The notebooks execute headless against a small run, and each run is one MLflow run with its metrics."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient
from test_cli import lakesynth

from lakesynth.standin import StandIn, StandInOptions

SECRET = "sk-lakesynth-PLANTED-mlflow-77"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One pipeline run on the stand-in (fine-tune off), with a planted key, shared by these tests."""
    server = StandIn(StandInOptions(api_key=SECRET)).start()
    tmp = tmp_path_factory.mktemp("small_run")
    os.environ["LAKESYNTH_NB_KEY"] = SECRET
    try:
        proc = lakesynth(
            "run",
            "--warehouse",
            str(tmp / "wh"),
            "--run-id",
            "nb-run",
            "--set",
            f"teacher.base_url={server.base_url}",
            "--set",
            "teacher.model=standin",
            "--set",
            "teacher.api_key_env=LAKESYNTH_NB_KEY",
            "--set",
            "finetune.backend=none",
            "--summary",
            str(tmp / "s.json"),
            tracking=True,
        )
    finally:
        del os.environ["LAKESYNTH_NB_KEY"]
        server.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp


@pytest.mark.parametrize("name", ["01_explore_seeds", "02_inspect_generations", "03_dataset_report"])
def test_notebook_runs_headless(small_run, name):
    book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    (params,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    params.source = (
        f"config_path = {str(ROOT / 'conf' / 'lakesynth.yml')!r}\n"
        f"overrides = ['warehouse={small_run / 'wh'}', 'mlflow.enabled=false']"
    )
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "execute_result" for o in outputs)
    if name == "03_dataset_report":
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) >= 4  # topics, lengths, errors, splits


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
    assert run.data.tags["stage.finetune"] == "skipped"
    params = run.data.params
    assert params["teacher.model"] == "standin" and params["teacher.api_key_env"] == "LAKESYNTH_NB_KEY"
    assert "questions.template_sha" in params and "questions.template" not in params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "report"} <= artifacts and "summary-nb-run.json" in artifacts
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert report == {"report/topics.png", "report/lengths.png", "report/errors.png", "report/splits.png"}
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
