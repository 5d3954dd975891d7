"""The bundle deploys as written: official schema, job model, entry points, task graph.

The schema is the official one of the Databricks CLI v1.13.0 (tests/fixtures/databricks-bundle-schema.json).
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import json
import re

import pytest
import tomllib
from conftest import ROOT
from databricks.bundles.jobs import Job
from deployment import Deployed

from lakesynth import cli, pipeline
from lakesynth.core import bundle, registry
from lakesynth.errors import ConfigError

SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "databricks-bundle-schema.json").read_text())
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.fixture
def merged():
    return bundle.load(ROOT)


def test_merged_bundle_matches_the_official_schema(merged):
    assert bundle.schema_problems(merged, SCHEMA) == []
    assert set(merged["targets"]) == {"dev", "prod"} and merged["targets"]["dev"]["default"] is True
    assert merged["targets"]["dev"]["mode"] == "development" and merged["targets"]["prod"]["mode"] == "production"
    # No target names a catalog and the variable has no default: many workspaces have no `main`; the deployer
    # sets theirs once (--var, BUNDLE_VAR_catalog or variable-overrides.json).
    assert all("catalog" not in t.get("variables", {}) for t in merged["targets"].values())
    assert "default" not in merged["variables"]["catalog"]
    assert {
        "catalog",
        "schema",
        "volume",
        "teacher_endpoint",
        "questions_per_seed",
        "finetune_backend",
        "base_model",
    } <= set(merged["variables"])
    resources = merged["resources"]
    assert resources["schemas"]["lakesynth"]["name"] == "${var.schema}"
    assert resources["volumes"]["lakesynth"]["schema_name"] == "${resources.schemas.lakesynth.name}"
    params = {p["name"]: p["default"] for p in bundle.job(merged)[1]["parameters"]}
    assert params["schema"] == "${resources.schemas.lakesynth.name}" and params["catalog"] == "${var.catalog}"
    # The volume variable reaches every task: the volume resource is named by it, the job passes its name on.
    assert resources["volumes"]["lakesynth"]["name"] == "${var.volume}"
    assert params["volume"] == "${resources.volumes.lakesynth.name}"
    for task in bundle.job(merged)[1]["tasks"]:
        if "python_wheel_task" in task:
            argv = task["python_wheel_task"]["parameters"]
            assert argv[argv.index("--volume") + 1] == "{{job.parameters.volume}}", task["task_key"]


TARGET_VARS = {"dev": {"catalog": "cat_x"}, "prod": {"catalog": "cat_x", "service_principal": "0000-sp-app-id"}}


@pytest.mark.parametrize("target", sorted(TARGET_VARS))
def test_each_target_resolved_matches_the_schema_and_builds_its_jobs(merged, target):
    resolved = bundle.for_target(merged, target, TARGET_VARS[target])
    assert bundle.schema_problems(resolved, SCHEMA) == []
    jobs = resolved["resources"]["jobs"]
    report = Job.from_dict(jobs.pop("lakesynth_report")).tasks[0].notebook_task
    assert report.notebook_path.endswith("notebooks/03_dataset_report.ipynb")
    expected_schema = "${resources.schemas.lakesynth.name}"  # in development mode, the dev_<user>_ prefixed name
    assert report.base_parameters["schema"] == "{{job.parameters.schema}}"
    assert next(p for p in jobs_parameters(merged, "lakesynth_report") if p["name"] == "schema")["default"] == (
        expected_schema
    )
    for key, spec in jobs.items():
        job = Job.from_dict(spec)
        finetune = next(t for t in job.tasks if t.task_key == "finetune")
        assert finetune.ai_runtime_task and not finetune.python_wheel_task, key
        # Serverless environment version 4 everywhere.
        assert {e["spec"]["environment_version"] for e in spec["environments"]} == {"4"}, key
    schema, volume = resolved["resources"]["schemas"]["lakesynth"], resolved["resources"]["volumes"]["lakesynth"]
    assert schema["catalog_name"] == volume["catalog_name"] == "cat_x"
    protected = {"prod": {"prevent_destroy": True}, "dev": None}[target]
    assert schema.get("lifecycle") == volume.get("lifecycle") == protected


def jobs_parameters(merged: dict, job: str) -> list[dict]:
    return merged["resources"]["jobs"][job]["parameters"]


def test_a_target_without_a_catalog_is_refused_naming_how_to_set_it(merged):
    with pytest.raises(
        ConfigError,
        match=r"target 'dev': no value for the bundle variable 'catalog'; set it with "
        r"--var catalog=<value>, BUNDLE_VAR_catalog, or \.databricks/bundle/dev/variable-overrides",
    ):
        bundle.for_target(merged, "dev")


def test_prod_runs_as_a_service_principal_under_its_own_folder(merged):
    prod = bundle.for_target(merged, "prod", TARGET_VARS["prod"])
    assert prod["run_as"] == {"service_principal_name": "0000-sp-app-id"}
    root = prod["workspace"]["root_path"]
    assert root.startswith("/Workspace/Users/0000-sp-app-id/") and "Shared" not in root


def test_the_wheel_version_is_unique_per_build(merged):
    build = merged["artifacts"]["default"]["build"]
    assert build == "python scripts/build_wheel.py"
    spec = importlib.util.spec_from_file_location("build_wheel", ROOT / "scripts" / "build_wheel.py")
    build_wheel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_wheel)
    now = datetime.datetime(2026, 12, 6, 7, 44, 30, tzinfo=datetime.UTC)
    assert build_wheel.local_version("0.1.0", now, "44055ef") == "0.1.0+20261206t074430.g44055ef"
    assert build_wheel.local_version("0.1.0", now) == "0.1.0+20261206t074430"


def test_finetune_is_a_gpu_task_after_the_data_with_pinned_training_libraries(merged):
    train = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    pins = dict(r.split("==") for r in train if "==" in r)
    for key, (after, script) in {
        "lakesynth": ("preference", "finetune.lakesynth.sh"),
        "lakesynth_tools": ("tool_format", "finetune.lakesynth_tools.sh"),
    }.items():
        _, spec = bundle.job(merged, key)
        task = next(t for t in spec["tasks"] if t["task_key"] == "finetune")
        ai = task["ai_runtime_task"]
        assert task["depends_on"] == [{"task_key": after}]
        assert not ai["experiment"].startswith("/") and ai["mlflow_experiment_directory"].startswith(
            "${workspace.root_path}"
        )
        (deployment,) = ai["deployments"]
        assert deployment["command_path"] == f"${{workspace.file_path}}/resources/{script}"
        assert (ROOT / "resources" / script).is_file()
        env = next(e for e in spec["environments"] if e["environment_key"] == task["environment_key"])["spec"]
        deps = dict(d.split("==") for d in env["dependencies"] if "==" in d)
        for lib in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
            assert deps[lib] == pins[lib], (key, lib)
        # The CPU evaluate task gets torch's CPU build, from the PyTorch index.
        evaluate = next(e for e in spec["environments"] if e["environment_key"] == "evaluate")["spec"]["dependencies"]
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in evaluate
        assert "torch==2.13.0+cpu" in evaluate


def test_nothing_installs_databricks_genai(merged):
    """The Foundation Model Fine-tuning API was removed on 2026-08-14 and its package can no longer be installed:
    no job environment, no dependency list of pyproject and no pip command anywhere names it."""
    genai = re.compile(r"databricks[-_]genai", re.IGNORECASE)
    installs = [
        f"job {key} environment {env['environment_key']}: {dep}"
        for key, spec in bundle.jobs(merged).items()
        for env in spec.get("environments", [])
        for dep in env["spec"].get("dependencies", [])
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installs += project["dependencies"] + [d for deps in project["optional-dependencies"].values() for d in deps]
    for path in ROOT.rglob("*"):
        skipped = {".git", ".venv", "dist", "build"} & set(
            path.relative_to(ROOT).parts
        ) or path.name == "test_bundle.py"
        if path.is_file() and not skipped and path.suffix in (".sh", ".py", ".yml", ".yaml", ".toml", ".txt", ".ipynb"):
            text = path.read_text(encoding="utf-8", errors="replace")
            installs += [f"{path.relative_to(ROOT)}: {line}" for line in text.splitlines() if "pip install" in line]
    assert [i for i in installs if genai.search(i)] == []


def test_the_job_builds_with_databricks_bundles(merged):
    _, spec = bundle.job(bundle.for_target(merged, "dev", {"catalog": "cat_x"}))
    job = Job.from_dict(spec)
    assert [t.task_key for t in job.tasks] == list(pipeline.job_graph(ROOT))
    assert spec["max_concurrent_runs"] == 1 and spec["schedule"]["quartz_cron_expression"]


def test_tasks_name_real_entry_points_and_a_dag(merged):
    assert bundle.task_problems(merged, SCRIPTS, cli.parse_args) == []
    _, spec = bundle.job(merged)
    for task in spec["tasks"]:
        if "ai_runtime_task" in task:  # the GPU fine-tune runs the finetune stage's training
            assert bundle.tasks({"tasks": [task]}, "x")[task["task_key"]][0] in registry.default_stages()
            continue
        assert task["python_wheel_task"]["parameters"][0] in registry.default_stages()
        assert "{{job.parameters.catalog}}" in task["python_wheel_task"]["parameters"]


def _broken(merged, change):
    broken = copy.deepcopy(merged)
    change(bundle.job(broken)[1])
    return broken


def test_an_unknown_key_fails_the_schema_readably(merged):
    broken = _broken(merged, lambda job: job["tasks"][0].update({"retry_forever": True}))
    problems = bundle.schema_problems(broken, SCHEMA)
    assert any("resources/jobs/lakesynth/tasks/0" in p and "retry_forever" in p for p in problems), problems
    with pytest.raises(ValueError, match="retry_forever"):
        Job.from_dict(bundle.job(broken)[1])


def test_a_missing_entry_point_and_a_dangling_dependency_are_named(merged):
    def change(job):
        job["tasks"][1]["python_wheel_task"]["entry_point"] = "lakesynth-questions"
        job["tasks"][2]["depends_on"] = [{"task_key": "questionz"}]

    problems = bundle.task_problems(_broken(merged, change), SCRIPTS, cli.parse_args)
    assert (
        "job 'lakesynth': task 'questions': entry_point 'lakesynth-questions' is not in [project.scripts] "
        "(has: lakesynth)" in problems
    )
    assert "job 'lakesynth': task 'critic': depends_on names no task 'questionz'" in problems


def test_bad_parameters_and_cycles_are_named(merged):
    def change(job):
        job["tasks"][0]["python_wheel_task"]["parameters"].append("--colour")
        job["tasks"][0]["depends_on"] = [{"task_key": "format"}]

    problems = bundle.task_problems(_broken(merged, change), SCRIPTS, cli.parse_args)
    assert any(
        p.startswith("job 'lakesynth': task 'seed': `lakesynth seed") and "rejected by the CLI" in p for p in problems
    )
    assert any("cycle" in p for p in problems)


def _embedding_models(cfg) -> str:
    """The model of every embeddings setting pointed at Databricks Model Serving, joined."""
    settings = (
        cfg.endpoint(cfg.quality.relevance.embeddings_endpoint),
        cfg.endpoint(cfg.quality.dedup.semantic.endpoint),
    )
    return ",".join(sorted({e.model for e in settings if e.base_url == "databricks"}))


# Each variable a user can set (`--var NAME=VALUE`), the value given, and where it must arrive in the config of
# every task that uses it. A variable missing here fails the test below: a new one needs its own check.
VARIABLES = {
    "catalog": ("cat_x", lambda cfg: cfg.catalog, "all"),
    "schema": ("schema_x", lambda cfg: cfg.schema_, "all"),
    "volume": ("vol_x", lambda cfg: cfg.volume, "all"),
    "teacher_endpoint": (
        "endpoint-x",
        lambda cfg: cfg.endpoint("teacher").model,
        ("questions", "critic", "responses", "judge", "relevance", "topup", "preference", "evaluate", "call_semantic"),
    ),
    "questions_per_seed": ("7", lambda cfg: str(cfg.questions.per_seed), ("questions", "topup")),
    "embedding_endpoint": ("embed-x", lambda cfg: _embedding_models(cfg), ("relevance", "dedup", "topup")),
    # The GPU fine-tune (no wheel task) reads both from its job's parameters: test_finetune checks that.
    "finetune_backend": ("none", lambda cfg: cfg.finetune.backend, ("evaluate", "tool_evaluate")),
    "base_model": ("org/student-x", lambda cfg: cfg.finetune.base_model, ("evaluate", "tool_evaluate")),
}


# Variables of the deployment itself, not of any task's config: each is checked by its own test above.
DEPLOY_ONLY = {"service_principal", "finetune_experiment"}


def test_every_variable_has_a_check(merged):
    assert set(merged["variables"]) == set(VARIABLES) | DEPLOY_ONLY


@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_every_bundle_variable_reaches_the_code(name, workspace):
    value, got, tasks = VARIABLES[name]
    deployed = Deployed(workspace, **{name: value})
    expected = f"dev_standin_{value}" if name == "schema" else value  # development mode prefixes the schema
    reached = []
    for job in deployed.jobs():
        for key, params in deployed.tasks(job):
            cfg = cli.build_config(cli.parse_args(params))
            if tasks == "all" or key in tasks:
                assert got(cfg) == expected, f"{job}.{key}: {name}={value} arrives as {got(cfg)!r}"
                reached.append(key)
    assert reached
