"""The built wheel, run the way a Databricks `python_wheel_task` runs it: from a folder that is not the bundle.

The wheel is built once for the module (from a copy of the project's files, so the checkout gets no build/
folder) and installed with `pip install --target` into a folder of its own. Every call then runs in a fresh,
empty working folder, with PYTHONPATH putting that installed copy ahead of the editable checkout, and calls
the `lakesynth` entry point found in the installed package's metadata with `sys.argv` set to the task's
parameters — as the platform does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import deltalake
import pytest
import yaml
from conftest import ROOT, write
from deployment import Deployed

from lakesynth import pipeline
from lakesynth.llm.standin import StandIn

# Runs in the child: the entry point from the installed distribution's metadata, called like a wheel task.
# Markers go to stderr so stdout stays the command's own (JSON for `stages --json`). A script file, not
# `python -c`: pyspark's Connect client takes a __main__ without __file__ for a doctest run and exits.
CALL = """
import importlib.metadata as md, json, sys
dist = md.distribution("lakesynth")
(ep,) = [e for e in dist.entry_points if e.group == "console_scripts" and e.name == "lakesynth"]
main = ep.load()
import lakesynth
print("LAKESYNTH_FILE=" + lakesynth.__file__, file=sys.stderr, flush=True)
print("ENTRY_POINT=" + ep.value, file=sys.stderr, flush=True)
sys.argv = ["lakesynth", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    print("SYSTEM_EXIT=" + repr(exc.code), file=sys.stderr, flush=True)
    raise
print("RETURNED", file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The wheel built as the bundle's artifact builds it (`pip wheel --no-deps`), installed alone into a fresh
    virtual environment outside the repository (`<base>/venv`), with the caller script beside it
    (`<base>/runner/call.py`). Returns the venv's site-packages.

    There is no network here, so the venv's other dependencies are the test environment's: a `.pth` file adds
    that site-packages as a plain path. Its own `.pth` files (the editable install of this checkout) are not
    processed, so `lakesynth` can only come from the wheel."""
    base = tmp_path_factory.mktemp("installed")
    write(base / "runner" / "call.py", CALL)
    project = base / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    for name in ("src", "resources", "conf"):
        # symlinks=True: src/lakesynth/bundled/* stay links, into the copy's own resources/ and conf/.
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        shutil.copytree(ROOT / name, project / name, symlinks=True, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(base / "dist"), str(project)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (base / "dist").glob("lakesynth-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")], check=True, timeout=120)
    python = base / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (Path(purelib) / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return Path(purelib)


def lakesynth(site: Path, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`lakesynth ARGS` from the installed wheel, in `cwd`, as a wheel task calls it."""
    cwd.mkdir(parents=True, exist_ok=True)
    assert pipeline.project_root(cwd) is None  # no bundle here or above: nothing to find on disk
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(site.parents[2] / "bin" / "python"), str(site.parents[3] / "runner" / "call.py"), json.dumps(args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**clean, **(env or {})},
    )
    loaded = next(line for line in proc.stderr.splitlines() if line.startswith("LAKESYNTH_FILE="))
    assert Path(loaded.partition("=")[2]).is_relative_to(site), "the editable checkout was imported, not the wheel"
    assert "ENTRY_POINT=lakesynth.cli:main" in proc.stderr
    return proc


def _packaged(site: Path, *parts: str) -> Path:
    return site / "lakesynth" / "bundled" / Path(*parts)


def test_the_wheel_carries_the_job_files_and_the_default_config(site):
    for name in [p.name for p in (ROOT / "resources").glob("*.job.yml")]:
        packaged = _packaged(site, "resources", name)
        assert not packaged.is_symlink() and packaged.read_bytes() == (ROOT / "resources" / name).read_bytes()
    config = _packaged(site, "conf", "lakesynth.yml")
    assert config.read_bytes() == (ROOT / "conf" / "lakesynth.yml").read_bytes()
    # The files the config names, relative to itself.
    named = yaml.safe_load(config.read_text())
    for rel in (named["use_case"]["rules_file"], named["seed"]["path"]):
        assert (config.parent / rel).read_bytes() == (ROOT / "conf" / rel).read_bytes()
    # The templates `lakesynth init` writes a project from.
    for template in (ROOT / "src" / "lakesynth" / "starter").iterdir():
        assert (site / "lakesynth" / "starter" / template.name).read_bytes() == template.read_bytes()


def test_run_from_an_empty_folder_uses_the_packaged_config_and_job(site, tmp_path):
    seeds = write(
        tmp_path / "in" / "small.csv",
        "topic,question,in_scope\ncards,How do I block my card?,yes\nstocks,Should I buy stocks?,no\n",
    )
    summary = tmp_path / "out" / "summary.json"
    proc = lakesynth(
        site,
        tmp_path / "cwd",
        *("run", "--seeds", seeds, "--stages", "seed", "--warehouse", str(tmp_path / "wh")),
        *("--set", "mlflow.enabled=false", "--summary", str(summary)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RETURNED" in proc.stderr
    assert "seed: ok, 2 in, 2 out, 0 errors" in proc.stdout
    config, job = _packaged(site, "conf", "lakesynth.yml"), _packaged(site, "resources", "lakesynth.job.yml")
    first = next(line for line in proc.stderr.splitlines() if line.startswith("lakesynth: "))
    assert first.startswith(f"lakesynth: config: domain-neutral default (no domain rules, a generic system prompt; "
                            f"the settings of {config}); `lakesynth init` writes a project of your own")  # fmt: skip
    assert f"; job lakesynth from {job} (packaged)" in first
    table = json.loads(summary.read_text())["tables"]["seed_questions"]
    assert table["rows"] == 2 and len(deltalake.DeltaTable(table["location"]).to_pandas()) == 2


def run_jobs(
    site: Path, deployed: Deployed, cwd: Path, env: dict, jobs: list[str] | None = None, start: str | None = None
) -> list[tuple[str, subprocess.CompletedProcess]]:
    """Every task of every job (or of `jobs`; from task `start` on), in order, each as its wheel task; as on
    Databricks, a failed task's dependents are not run (here: nothing after it)."""
    ran = []
    for job in jobs or deployed.jobs():
        tasks = deployed.tasks(job)
        for key, params in tasks[[key for key, _ in tasks].index(start) if start else 0 :]:
            proc = lakesynth(site, cwd, *params, env=env)
            ran.append((f"{job}.{key}", proc))
            if proc.returncode != 0:
                return ran
    return ran


@pytest.mark.slow
def test_every_task_of_every_job_runs_from_the_installed_wheel(site, workspace, tmp_path):
    server = StandIn().start()  # the workspace: Model Serving and the Jobs API the fine-tune task calls
    env = {"DATABRICKS_HOST": server.base_url.removesuffix("/v1"), "DATABRICKS_TOKEN": "dapi-standin"}
    cwd = tmp_path / "task-cwd"  # not the bundle, not the repository: where a wheel task starts
    # MLflow tracking (tested in test_notebooks_and_tracking) off in this copy of the config: it would only
    # add its start-up to each of the twenty task processes.
    with (workspace / "conf" / "lakesynth.yml").open("a") as config:
        config.write("\nmlflow:\n  enabled: false\n")
    try:
        # The default volume with every job, then `--var volume=other` with the Q&A job from its first task that
        # writes files (the schema's tables are made): each task process takes a couple of seconds, and the
        # function-calling job's files land in the volume by the same code.
        for volume, jobs, start in (("lakesynth", None, None), ("other", ["lakesynth"], "format")):
            deployed = Deployed(workspace, volume=volume)
            ran = run_jobs(site, deployed, cwd, env, jobs, start)
            keys = [f"{j}.{k}" for j in jobs or deployed.jobs() for k, _ in deployed.tasks(j)]
            expected = keys[keys.index(f"{jobs[0]}.{start}") :] if start else keys
            assert [t for t, _ in ran] == expected, ran[-1][1].stdout + ran[-1][1].stderr
            for task, proc in ran:
                assert proc.returncode == 0 and "RETURNED" in proc.stderr, f"{task}:\n{proc.stdout}{proc.stderr}"
            folder = cwd / ".lakesynth" / "warehouse" / "main" / "dev_standin_lakesynth_dev" / volume
            assert (folder / "training_chat" / "train.jsonl").stat().st_size > 0, volume
        # One fine-tune per job that has one, per distinct data (the Q&A job's in both volumes).
        finetunes = {j: sum(params[0] == "finetune" for _, params in deployed.tasks(j)) for j in deployed.jobs()}
        expected_runs = sum(finetunes.values()) + finetunes["lakesynth"]
        assert server.stats.completions > 0 and len(server.stats.runs) == expected_runs
        # A broken seed file: the seed task's call raises, so the platform runs none of the tasks after it.
        write(workspace / "conf" / "bank" / "seeds.csv", "topic,question,in_scope\ncards,,yes\n")
        ran = run_jobs(site, Deployed(workspace), cwd, env)
        assert [t for t, _ in ran] == ["lakesynth.seed"]
        (_, proc) = ran[0]
        assert "SYSTEM_EXIT=1" in proc.stderr and "RETURNED" not in proc.stderr
        assert "empty question: row(s) 1" in proc.stdout
    finally:
        server.stop()


def test_a_single_stage_task_needs_no_bundle_files(site, workspace, tmp_path):
    params = dict(Deployed(workspace, run_id="7", catalog="cat1", schema="s1").tasks("lakesynth"))["seed"]
    assert params[0] == "seed" and "--config" in params
    tail = ("--warehouse", str(tmp_path / "wh"), "--set", "mlflow.enabled=false")
    summary = tmp_path / "task.json"
    proc = lakesynth(site, tmp_path / "task", *params, *tail, "--summary", str(summary))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"config {workspace / 'conf' / 'lakesynth.yml'}; job lakesynth from" in proc.stderr
    report = json.loads(summary.read_text())
    assert (
        report["run_id"] == "7" and report["tables"]["seed_questions"]["table"] == "cat1.dev_standin_s1.seed_questions"
    )
    # The same stage with no config file at all: the packaged default, and its packaged seed file.
    proc = lakesynth(site, tmp_path / "bare", "seed", "--catalog", "main", "--schema", "s2", "--run-id", "7", *tail)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config: domain-neutral default" in proc.stderr and "seed: ok" in proc.stdout


def test_a_failing_stage_makes_the_entry_point_raise(site, tmp_path):
    bad = write(tmp_path / "in" / "bad.csv", "topic,question,in_scope\ncards,,yes\n")
    args = ("seed", "--seeds", bad, "--warehouse", str(tmp_path / "wh"), "--set", "mlflow.enabled=false")
    proc = lakesynth(site, tmp_path / "cwd", *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SYSTEM_EXIT=1" in proc.stderr and "RETURNED" not in proc.stderr
    assert "seed: failed" in proc.stdout and "empty question: row(s) 1" in proc.stdout


def test_stages_lists_the_packaged_job_from_an_empty_folder(site, tmp_path):
    proc = lakesynth(site, tmp_path / "cwd", "stages", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["task"] for r in rows if r["job"] == "lakesynth"] == pipeline.order(pipeline.job_graph(ROOT))


def test_a_call_from_python_c_starts_the_embedded_engine_in_the_fresh_environment(site, tmp_path):
    """Issue 24's call, as typed at a prompt: `__main__` has no file, and pyspark's client must not go looking for
    SPARK_HOME. The fresh venv, an empty folder outside the repository, the seed stage on the embedded engine."""
    folder = tmp_path / "prompt"
    write(folder / "my.csv", "topic,question,in_scope\ncards,How do I block my card?,true\nfees,Why a fee?,true\n")
    code = (
        "import sys; sys.argv=['lakesynth','seed','--seeds','my.csv','--set','mlflow.enabled=false']; "
        "from lakesynth.cli import main; main()"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SPARK_HOME")}
    proc = subprocess.run(
        [str(site.parents[2] / "bin" / "python"), "-c", code],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=clean,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "seed: ok, 2 in, 2 out, 0 errors" in proc.stdout
    assert "SPARK_HOME" not in proc.stderr
    # No config of its own: the domain-neutral default, in its own schema.
    assert (
        folder / ".lakesynth" / "warehouse" / "main" / "lakesynth_default" / "seed_questions" / "_delta_log"
    ).is_dir()
