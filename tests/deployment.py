"""The bundle as Databricks deploys and runs it: its files synced to a workspace folder, each task's parameters
resolved as a job run resolves them. Used by the tests that run tasks the way the platform does."""

from __future__ import annotations

import re
from pathlib import Path

from lakesynth import pipeline
from lakesynth.core import bundle

REF = re.compile(r"\$\{([^}]+)\}|\{\{\s*job\.(parameters\.\w+|run_id)\s*\}\}")


class Deployed:
    """The bundle as `databricks bundle deploy -t TARGET --var NAME=VALUE` resolves it from the workspace's copy
    of its files (`files`, which is ${workspace.file_path}), and each task's parameters as a run of its job
    passes them: `${var.*}`, `${workspace.*}`, `${resources.*}` and `{{job.parameters.*}}`/`{{job.run_id}}`
    filled in. In development mode a schema's name gets the `dev_<user>_` prefix, as the CLI gives it."""

    def __init__(self, files: Path, target: str = "dev", run_id: str = "1001", **variables: str) -> None:
        self.files, self.run_id = files, run_id
        self.bundle = bundle.load(files)
        declared = self.bundle["variables"]
        self.target = self.bundle["targets"][target]
        # dev has no catalog of its own (each user sets theirs): these tests deploy as `--var catalog=main`.
        given = {"catalog": "main"} | variables
        self.vars = {k: v.get("default") for k, v in declared.items()} | self.target.get("variables", {}) | given
        self.values = {"workspace.file_path": str(files), "bundle.name": self.bundle["bundle"]["name"]}

    def _ref(self, name: str, params: dict) -> str:
        if name.startswith("var."):
            value = self.vars[name.removeprefix("var.")]
            assert value is not None, f"bundle variable {name} has no value for this target"
        elif name in self.values:
            value = self.values[name]
        else:
            value = self.bundle
            for part in name.split("."):
                value = value[part]
            if name.startswith("resources.schemas.") and self.target.get("mode") == "development":
                value = f"dev_standin_{self.resolve(value, params)}"
        return self.resolve(str(value), params)

    def resolve(self, text: str, params: dict | None = None) -> str:
        def one(match: re.Match) -> str:
            if match.group(1):
                return self._ref(match.group(1), params or {})
            return self.run_id if match.group(2) == "run_id" else params[match.group(2).removeprefix("parameters.")]

        return REF.sub(one, text)

    def jobs(self) -> list[str]:
        """The pipeline jobs, whose tasks are wheel stages (the report job is one notebook task)."""
        jobs = self.bundle["resources"]["jobs"]
        return [k for k, spec in jobs.items() if any("python_wheel_task" in t for t in spec["tasks"])]

    def tasks(self, job: str) -> list[tuple[str, list[str]]]:
        """Each wheel task of `job` in dependency order, with the parameters it is called with (an ai_runtime_task,
        the GPU fine-tune, is no wheel task: lakesynth.training.ai_runtime runs it, tested in test_finetune)."""
        spec = self.bundle["resources"]["jobs"][job]
        params = {p["name"]: self.resolve(str(p["default"])) for p in spec.get("parameters", [])}
        by_key = {t["task_key"]: t for t in spec["tasks"]}
        return [
            (key, [self.resolve(str(a), params) for a in by_key[key]["python_wheel_task"]["parameters"]])
            for key in pipeline.order(bundle.tasks(spec, job))
            if "python_wheel_task" in by_key[key]
        ]
