"""The notebooks execute headless against a small run, and each run is one MLflow run with its metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import deltalake
import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from test_cli import lakesynth

from lakesynth.core import run_log
from lakesynth.llm.standin import StandIn, StandInOptions
from lakesynth.report import notebook, tracking

SECRET = "sk-lakesynth-PLANTED-mlflow-77"
DEV_SCHEMA = "dev_standin_lakesynth_dev"  # as a dev deploy names the schema (`mode: development` prefixes it)
STATE = "LAKESYNTH_STATE_DIR"  # runtime.STATE_ENV: where a run records itself as the last one


def _run_on_standin(tmp: Path, *args: str, tracking: bool, env: dict | None = None) -> None:
    """A pipeline run on the stand-in (fine-tune off), its key planted in the environment; `{server}` in an
    argument is the stand-in's URL; `env` more of the process's environment."""
    server = StandIn(StandInOptions(api_key=SECRET)).start()
    os.environ["LAKESYNTH_NB_KEY"] = SECRET
    try:
        proc = lakesynth(
            "run",
            "--warehouse",
            str(tmp / "wh"),
            "--set",
            f"endpoints.teacher.base_url={server.base_url}",
            "--set",
            "endpoints.teacher.model=standin",
            "--set",
            "endpoints.teacher.api_key_env=LAKESYNTH_NB_KEY",
            "--set",
            "finetune.backend=none",
            *[arg.format(server=server.base_url) for arg in args],
            tracking=tracking,
            env=env,
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
        "--schema",
        DEV_SCHEMA,
        "--set",
        "quality.critic.enabled=true",
        "--set",
        "quality.judge.enabled=true",
        "--set",
        "quality.relevance.enabled=true",
        "--set",
        "quality.relevance.threshold=0.84",
        "--set",
        "endpoints.embeddings.base_url={server}",
        "--set",
        "endpoints.embeddings.api_key_env=LAKESYNTH_NB_KEY",
        "--summary",
        str(tmp / "s.json"),
        tracking=True,
        env={STATE: str(tmp / "state")},  # where it records itself as the last run, for `lakesynth report`
    )
    return tmp


@pytest.fixture(autouse=True)
def own_state(tmp_path, monkeypatch):
    """Each test's runs record themselves as the last run in a state folder of its own (never the user's, and
    never one that another test's run changed); a test that reads the fixture's run names its folder."""
    monkeypatch.setenv(STATE, str(tmp_path / "state"))


def _book(name: str, folder: Path = ROOT / "notebooks", **params: object):
    """The notebook with its parameters cell set as papermill (or a job's base_parameters) would set them."""
    book = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    (cell,) = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source += "".join(f"\n{key} = {value!r}" for key, value in params.items())
    return book


def _execute(name: str, warehouse: Path, *overrides: str, schema: str = DEV_SCHEMA, **params: object) -> list:
    """The notebook executed headless on `warehouse`, given the catalog and schema as a dev deploy's job passes
    them, and config `overrides` (KEY=VALUE, applied last); its cells' outputs, none of them an error."""
    book = _book(name, catalog="main", schema=schema, warehouse=str(warehouse), overrides=list(overrides), **params)
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
    # funnel, topics, lengths, splits, kept/dropped per reason, scores; each once (no error chart: no errors)
    assert len(images) == len(set(images)) == 6
    text = _text(outputs)
    # The yield funnel's steps, as the run's summary has them, down to the kept examples per split.
    found = json.loads((small_run / "s.json").read_text())["funnel"]
    for step in found["steps"]:
        assert re.search(rf"^{step['step']} +{step['in']} +{step['dropped']} +{step['kept']}\b", text, re.MULTILINE), (
            step
        )
    splits = ", ".join(f"{k} {v}" for k, v in found["splits"].items())
    assert re.search(rf"^kept +{found['kept']} +0 +{found['kept']} +{splits}$", text, re.MULTILINE)
    assert "No errors" in text
    for check in ("critic", "judge", "relevance"):
        assert re.search(rf"^{check}: [1-9]\d* dropped$", text, re.MULTILINE)
    assert "dedup: 0 dropped as duplicates" in text and " is off" not in text
    # The drop-reason table, and a few rejected rows per reason with the check's reasoning.
    for reason in ("kept", "critic", "judge:quality", "judge:scope", "relevance"):
        assert re.search(rf"^{reason} +\w* +\d+ +\d+%$", text, re.MULTILINE), reason
    assert text.count("Stand-in reasoning") >= 6 and "score 1: Stand-in reasoning" in text
    assert "the answer reads as answering: Stand-in questions" in text


def test_the_dataset_report_says_so_when_the_checks_are_off(tmp_path):
    """In a warehouse of its own: the shared one's last run stays the fixture's."""
    _run_on_standin(tmp_path, "--schema", "gate_off", tracking=False)  # the checks but dedup off, as by default
    outputs = _execute("03_dataset_report", tmp_path / "wh", schema="gate_off")
    images = _images(outputs)
    assert len(images) == len(set(images)) == 4  # funnel, topics, lengths, splits: no empty quality gate chart
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
    book = _book("01_explore_seeds", files / "notebooks", schema=DEV_SCHEMA, warehouse=str(small_run / "wh"))
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
    assert (
        params["endpoints.teacher.model"] == "standin" and params["endpoints.teacher.api_key_env"] == "LAKESYNTH_NB_KEY"
    )
    assert "questions.template_sha" in params and "questions.template" not in params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "report"} <= artifacts and "summary-nb-run.json" in artifacts
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert report == {"report/topics.png", "report/lengths.png", "report/errors.png", "report/splits.png"}
    quality = {a.path.removeprefix("quality/") for a in client.list_artifacts(run.info.run_id, "quality")}
    checks = {
        "critic": "question_verdicts",
        "judge": "answer_verdicts",
        "relevance": "relevance_verdicts",
        "rule_checks": "rule_verdicts",
    }
    drop_reasons = {f"{check}_drop_reasons.json" for check in (*checks, "dedup", "screen")}
    assert quality == drop_reasons | {f"{table}_scores.png" for table in checks.values()}
    # The yield funnel: its plot and figures, and its counts as metrics.
    found = json.loads((small_run / "s.json").read_text())["funnel"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "funnel")} == {
        "funnel/funnel.png",
        "funnel/funnel.json",
    }
    assert metrics["funnel.generated"] == found["generated"] and metrics["funnel.kept"] == found["kept"] > 0
    assert metrics["funnel.judge.dropped"] == next(s["dropped"] for s in found["steps"] if s["step"] == "judge") > 0
    judged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/quality/judge_drop_reasons.json")
    assert judged["dropped"]["judge:scope"] == metrics["judge.dropped.judge_scope"]
    # A later task of the same job run logs into the same MLflow run.
    again = lakesynth(
        "run",
        "--stages",
        "format",
        "--warehouse",
        str(small_run / "wh"),
        "--schema",
        DEV_SCHEMA,
        "--run-id",
        "nb-run",
        tracking=True,
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

    from lakesynth import pipeline

    cfg = llm_cfg.model_copy(update={"finetune": llm_cfg.finetune.model_copy(update={"backend": "none"})})
    summary = pipeline.run(cfg, ["seed", "questions", "responses", "format", "finetune"], root=ROOT)
    assert summary["tables"]["run_log"]["rows"] == 6
    log = {r.task: r for r in spark.table(where(cfg).fqn("run_log")).collect()}
    assert {t: r.status for t, r in log.items()} == {
        "seed": "ok", "questions": "ok", "responses": "ok", "format": "ok", "finetune": "skipped", "funnel": "ok"
    }  # fmt: skip
    # The run's yield funnel, as its summary has it: every question, kept ones in training_chat.
    found = json.loads(log["funnel"].metrics)["funnel"]
    assert found == summary["funnel"] and found["generated"] == 72
    assert found["kept"] == summary["stages"]["format"]["rows_out"]
    q = log["questions"]
    assert q.run_id == cfg.run_id and q.model == "standin" and q.rows_in == 24 and q.prompt_tokens > 0
    assert len(q.prompt_version) == 12 and json.loads(q.parameters)["per_seed"] == "3"
    assert "template_sha" in json.loads(q.parameters)  # long texts as hashes
    assert json.loads(log["format"].files)["train_jsonl"].endswith("train.jsonl")
    assert json.loads(log["format"].metrics)["val_examples"] == summary["stages"]["format"]["val_examples"]
    assert log["finetune"].reason == "finetune.backend is none"
    pipeline.run(cfg, ["format"], root=ROOT)  # a rerun of a task in the same run replaces its row
    assert spark.table(where(cfg).fqn("run_log")).count() == 6
    assert run_log.RUN_LOG.name == "run_log"


def test_show_prints_dropped_pairs_beside_their_reasons(small_run, tmp_path):
    """`lakesynth show pair_verdicts --dropped -n 5`, from a folder with no warehouse of its own and no --schema:
    the last run's schema, five dropped pairs, each with its reason and what its checks said, one block per row
    that stays readable piped (80 columns)."""
    proc = lakesynth(
        "show", "pair_verdicts", "--dropped", "-n", "5", cwd=tmp_path, env={STATE: str(small_run / "state")}
    )
    assert proc.returncode == 0, proc.stderr
    title = next(line for line in proc.stdout.splitlines() if line.startswith("pair_verdicts: "))
    lines = proc.stdout.split(title, 1)[1].splitlines()
    assert title.endswith(f"(main.{DEV_SCHEMA} (warehouse {small_run / 'wh'}))"), title
    shown = re.findall(r"^question_id +(\w{16}) *\nkeep +False *\ndrop_reason +([\w:]+) *$", proc.stdout, re.MULTILINE)
    verdicts = deltalake.DeltaTable(str(small_run / "wh" / "main" / DEV_SCHEMA / "pair_verdicts")).to_pandas()
    dropped = verdicts[~verdicts.keep.astype(bool)].sort_values("question_id").head(5)
    assert shown == list(zip(dropped.question_id, dropped.drop_reason)) and len(shown) == 5
    assert f"pair_verdicts: 5 of {len(verdicts[~verdicts.keep.astype(bool)])} dropped rows" in proc.stdout
    assert "Stand-in reasoning" in proc.stdout  # the checks' reasoning beside the reason
    assert max(map(len, lines)) <= 80 and len(lines) < 5 * 60  # not a grid of 5-character columns
    for question in dropped.question:  # each question's text, whole, wrapped at the line's end
        words = " ".join(line.removeprefix("question").strip() for line in lines)
        assert " ".join(question.split()) in words


def test_show_of_an_unknown_table_names_the_tables(small_run, tmp_path):
    proc = lakesynth("show", "nosuch", cwd=tmp_path, env={STATE: str(small_run / "state")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "show: no table named 'nosuch'; the tables: " in proc.stderr and "pair_verdicts" in proc.stderr


def test_report_writes_the_last_runs_report_as_html_with_no_path_given(small_run, tmp_path):
    """`lakesynth report` from a folder with no warehouse of its own: the last run's report, beside its warehouse,
    with the funnel plot and table, the warnings, each check's scores and a few dropped rows per reason."""
    last = json.loads((small_run / "wh" / notebook.LAST_RUN).read_text())
    proc = lakesynth("report", cwd=tmp_path, env={STATE: str(small_run / "state")})
    assert proc.returncode == 0, proc.stderr
    out = small_run / "report.html"
    assert proc.stdout.strip().endswith(f"report: {out}") and f"main.{last['schema']}" in proc.stdout
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<h2>Yield funnel</h2>" in page and "<h2>Warnings</h2>" in page
    assert page.count("data:image/png;base64,") >= 2 and "<td>generated</td>" in page
    assert last["schema"] == DEV_SCHEMA  # the fixture's run, where the checks ran: their scores and dropped rows
    assert "<h3>pair_verdicts</h3>" in page and "judge:scope" in page


def test_the_dataset_report_opened_with_only_a_config_finds_the_last_run(small_run, tmp_path):
    """Opened as a new user would, from a notebooks folder outside any project with only `config_path` set: it
    reads the last run's warehouse, not one relative to the notebook's folder."""
    last = json.loads((small_run / "wh" / notebook.LAST_RUN).read_text())
    folder = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", folder)
    book = _book("03_dataset_report", folder, config_path=str(ROOT / "conf" / "lakesynth.yml"))
    NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute(
        env={**os.environ, STATE: str(small_run / "state")}
    )
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert f"tables in main.{last['schema']} (warehouse {small_run / 'wh'})" in _text(outputs)
    assert not (folder / ".lakesynth").exists()


def test_a_notebook_reads_where_the_last_local_run_wrote(small_run):
    """No catalog or schema given (Jupyter, no job): the notebook reads the schema that the last run in the
    warehouse wrote, from the marker that run left there."""
    last = json.loads((small_run / "wh" / notebook.LAST_RUN).read_text())
    book = _book("01_explore_seeds", warehouse=str(small_run / "wh"))
    NotebookClient(book, timeout=300, kernel_name="python3").execute()
    text = _text([o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])])
    assert f"tables in main.{last['schema']} (warehouse {small_run / 'wh'})" in text
    assert "24 seed questions" in text


def test_a_notebook_pointed_at_an_empty_schema_says_where_it_looked(small_run):
    """No table is created, and the notebook stops with one clear line instead of "Table or view not found"."""
    book = _book("02_inspect_generations", catalog="main", schema="nothing_here", warehouse=str(small_run / "wh"))
    with pytest.raises(CellExecutionError):
        NotebookClient(book, timeout=300, kernel_name="python3").execute()
    (error,) = [
        o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert error.ename == "NoTables"
    shown = "\n".join(error.traceback)
    assert f"no tables in main.nothing_here (warehouse {small_run / 'wh'})" in shown
    assert "none of seed_questions, synthetic_questions, synthetic_responses" in shown and "lakesynth run" in shown
    assert "Traceback" not in shown
    assert not (small_run / "wh" / "main" / "nothing_here").exists()


def _root_task(stage: str, warehouse: Path, *args: str):
    """One root task of job run `job-1` in a process of its own, tracked, as a job starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "lakesynth.cli", stage, "--warehouse", str(warehouse), "--run-id", "job-1", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_root_tasks_of_a_job_run_start_together_and_log_into_one_mlflow_run(tmp_path):
    """`seed` and `documents` start at once against a store with no experiment (no store at all): both succeed,
    and the job run has one MLflow run. Locally a schema admits one run at a time (pipeline.schema_lock), so the
    two write different schemas here; what they share, as on Databricks, is the store and the job run id."""
    tasks = [_root_task(stage, tmp_path / "wh", "--schema", stage) for stage in ("seed", "documents")]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    assert not [line for out in outputs for line in out.splitlines() if "warning" in line], outputs
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lakesynth")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["lakesynth.run_id"] == "job-1"
    assert run.data.tags["stage.seed"] == run.data.tags["stage.documents"] == "ok"
    assert run.data.metrics["seed.rows_out"] == 24 and "documents.rows_out" in run.data.metrics
    assert run.data.params["schema"] in ("seed", "documents")  # the config, logged once, by the run's creator


RACER = """
import json, sys, time
from pathlib import Path

import mlflow

from lakesynth.report import tracking

store, gate, me, racers = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
client = mlflow.MlflowClient(f"sqlite:///{store}")
client.search_experiments()  # the store opened before the start line: the race is in what follows
(gate / me).touch()
while len(list(gate.iterdir())) < racers:
    time.sleep(0.001)
run_id, created = tracking.join_run(client, tracking.experiment(client, "racing", None), "job-2")
print(json.dumps({"run_id": run_id, "created": created}))
"""


def test_tasks_racing_for_the_job_runs_mlflow_run_keep_exactly_one(tmp_path):
    """Three tasks of one job run reach MLflow at the same instant (a barrier, after the slow imports), with no
    experiment yet: all get the same run; each run a loser created is deleted, by that loser."""
    from mlflow.entities import ViewType

    from lakesynth.report import tracking

    store = tmp_path / "mlflow.db"
    tracking._new_sqlite_store(store, Path("~/.cache/lakesynth").expanduser())
    (tmp_path / "gate").mkdir()
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    racers = [
        subprocess.Popen(
            [sys.executable, str(script), str(store), str(tmp_path / "gate"), str(i), "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 3
    assert len({r["run_id"] for r in results}) == 1 and sum(r["created"] for r in results) == 1
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("racing")
    every = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert [r.info.run_id for r in every if r.info.lifecycle_stage == "active"] == [results[0]["run_id"]]


def test_a_tracking_store_that_cannot_work_is_a_warning_and_the_task_succeeds(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    summary = tmp_path / "s.json"
    proc = lakesynth(
        "seed",
        "--warehouse",
        str(tmp_path / "wh"),
        "--set",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'not-a-folder' / 'mlflow.db'}",
        "--summary",
        str(summary),
        tracking=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mlflow: warning: not tracked in MLflow (" in proc.stdout and "seed: ok, 24 in, 24 out" in proc.stdout
    seed = json.loads(summary.read_text())["stages"]["seed"]
    assert seed["status"] == "ok" and seed["warnings"][0].startswith("not tracked in MLflow (")


def test_mlflow_failures_while_logging_are_warnings_in_the_summary(cfg, tmp_path):
    """A run deleted under the task (metrics refused) and an artifact store that cannot be written (a file where
    its folder should be): each is a warning in the stage's entry and the summary, and nothing raises."""
    import mlflow

    from lakesynth.core.runtime import Runtime
    from lakesynth.core.stage import RunContext
    from lakesynth.report import tracking

    cfg = cfg.model_copy(
        update={"warehouse": str(tmp_path / "wh"), "mlflow": cfg.mlflow.model_copy(update={"enabled": True})}
    )
    (tmp_path / "mlartifacts").write_text("")  # where the experiment keeps its artifacts
    tracker = tracking.Tracker(cfg, Runtime.resolve(cfg)).start()
    assert tracker.run_id and not tracker.warnings
    summary = {"run_id": cfg.run_id, "tables": {}, "files": {}, "stages": {"seed": {"status": "ok", "rows_out": 3}}}
    tracker.stage("seed", summary["stages"]["seed"])
    assert "warnings" not in summary["stages"]["seed"]
    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").delete_run(tracker.run_id)
    summary["stages"]["questions"] = {"status": "ok", "rows_out": 9}
    tracker.stage("questions", summary["stages"]["questions"])
    (refused,) = summary["stages"]["questions"]["warnings"]
    assert refused.startswith("metrics not logged to MLflow (MlflowException")
    tracker.finish(summary, RunContext(cfg))
    assert any(w.startswith("the run summary not logged to MLflow (") for w in summary["warnings"])
    assert refused in summary["warnings"]
    assert summary["stages"]["seed"]["warnings"] == [w for w in summary["warnings"] if w != refused]


def test_on_databricks_a_bare_experiment_name_is_one_per_deployed_target():
    from lakesynth.core.runtime import Runtime

    def on(schema: str) -> Runtime:
        return Runtime(databricks=True, catalog="ml", schema=schema, volume="v", warehouse="/unused")

    assert (
        tracking.experiment_name("lakesynth", on("dev_ana_lakesynth_dev"))
        == "/Shared/lakesynth-ml.dev_ana_lakesynth_dev"
    )
    assert tracking.experiment_name("lakesynth", on("lakesynth")) == "/Shared/lakesynth-ml.lakesynth"
    assert tracking.experiment_name("/Users/sp/exp", on("lakesynth")) == "/Users/sp/exp"  # a path as given
    local = Runtime(databricks=False, catalog="main", schema="s", volume="v", warehouse="/w")
    assert tracking.experiment_name("lakesynth", local) == "lakesynth"
