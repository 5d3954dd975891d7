"""The bundle deploys as written: official schema, job model, entry points, task graph.

The schema is the official one of the Databricks CLI v1.13.0 (tests/fixtures/databricks-bundle-schema.json).
"""

from __future__ import annotations

import copy
import json

import pytest
import tomllib
from conftest import ROOT
from databricks.bundles.jobs import Job
from deployment import Deployed

from lakesynth import bundle, cli, pipeline, registry

SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "databricks-bundle-schema.json").read_text())
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.fixture
def merged():
    return bundle.load(ROOT)


def test_merged_bundle_matches_the_official_schema(merged):
    assert bundle.schema_problems(merged, SCHEMA) == []
    assert set(merged["targets"]) == {"dev", "prod"} and merged["targets"]["dev"]["default"] is True
    assert merged["targets"]["dev"]["mode"] == "development" and merged["targets"]["prod"]["mode"] == "production"
    # As the default template: catalog and schema per target; prod names no catalog, the deployer must.
    assert merged["targets"]["dev"]["variables"]["catalog"] == "main"
    assert "catalog" not in merged["targets"]["prod"]["variables"] and "default" not in merged["variables"]["catalog"]
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
        argv = task["python_wheel_task"]["parameters"]
        assert argv[argv.index("--volume") + 1] == "{{job.parameters.volume}}", task["task_key"]


def test_the_job_builds_with_databricks_bundles(merged):
    _, spec = bundle.job(merged)
    job = Job.from_dict(spec)
    assert [t.task_key for t in job.tasks] == list(pipeline.job_graph(ROOT))
    assert spec["max_concurrent_runs"] == 1 and spec["schedule"]["quartz_cron_expression"]


def test_tasks_name_real_entry_points_and_a_dag(merged):
    assert bundle.task_problems(merged, SCRIPTS, cli.parse_args) == []
    _, spec = bundle.job(merged)
    for task in spec["tasks"]:
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
    settings = (cfg.quality.relevance.embeddings, cfg.quality.dedup.semantic)
    return ",".join(sorted({e.model for e in settings if e.base_url == "databricks"}))


# Each variable a user can set (`--var NAME=VALUE`), the value given, and where it must arrive in the config of
# every task that uses it. A variable missing here fails the test below: a new one needs its own check.
VARIABLES = {
    "catalog": ("cat_x", lambda cfg: cfg.catalog, "all"),
    "schema": ("schema_x", lambda cfg: cfg.schema_, "all"),
    "volume": ("vol_x", lambda cfg: cfg.volume, "all"),
    "teacher_endpoint": (
        "endpoint-x",
        lambda cfg: cfg.teacher.model,
        ("questions", "critic", "responses", "judge", "relevance", "topup", "preference", "evaluate", "call_semantic"),
    ),
    "questions_per_seed": ("7", lambda cfg: str(cfg.questions.per_seed), ("questions", "topup")),
    "embedding_endpoint": ("embed-x", lambda cfg: _embedding_models(cfg), ("relevance", "dedup", "topup")),
    "finetune_backend": ("none", lambda cfg: cfg.finetune.backend, ("finetune", "evaluate", "tool_evaluate")),
    "base_model": ("org/student-x", lambda cfg: cfg.finetune.base_model, ("finetune", "evaluate", "tool_evaluate")),
}


def test_every_variable_has_a_check(merged):
    assert set(merged["variables"]) == set(VARIABLES)


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
