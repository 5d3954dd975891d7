"""What the `finetune` task of a bundle job runs on its serverless GPU node (an `ai_runtime_task`).

The job's `finetune` task is an `ai_runtime_task` whose command is a script synced with the bundle
(`resources/finetune.<job>.sh`). That task type takes no parameters (CLI 1.13 schema), so the script cannot be
handed the job's catalog, schema and volume the way a wheel task is. It names itself instead, and this module
finds the job whose `ai_runtime_task` runs that script (Jobs API, as the run's identity) and reads the job's
parameters: the same values every other task of the run was given. Then it trains exactly as the local backend
does, into the Volume, and records the adapter where the evaluate task looks for an `ai_runtime` fine-tune.

Idempotent as the local backend: the same split files and settings (their fingerprint) find the adapter an
earlier run made, and nothing is trained again.

    python -m lakesynth.training.ai_runtime --command /Workspace/.../files/resources/finetune.lakesynth.sh [--set K=V ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from lakesynth.errors import ConfigError, LakesynthError

# Job parameters this reads (each job of the bundle declares them): the task's Volume and what it trains.
PARAMETERS = ("catalog", "schema", "volume", "finetune_backend", "base_model")


def _workspace_path(path: str) -> str:
    """A workspace path in one spelling: the Jobs API may name `/Users/…`, a node sees `/Workspace/Users/…`."""
    return "/" + path.strip("/").removeprefix("Workspace/")


def job_parameters(jobs: Any, command: str) -> dict[str, str]:
    """The parameters (name -> value) of the one job whose `ai_runtime_task` runs `command`: those of its active run
    (and `run_id`, that run's id) where there is one, else the job's defaults; `jobs` is a databricks-sdk
    `WorkspaceClient().jobs`."""
    wanted = _workspace_path(command)
    found = []
    for job in jobs.list(expand_tasks=True):
        settings = job.settings
        for task in (settings.tasks if settings else None) or []:
            deployments = (task.ai_runtime_task.deployments or []) if getattr(task, "ai_runtime_task", None) else []
            if any(_workspace_path(d.command_path or "") == wanted for d in deployments):
                found.append(job)
    if len(found) != 1:
        raise ConfigError(
            f"{command}: expected one job whose ai_runtime_task runs this script, found {len(found)}"
            + (f" (job ids {', '.join(str(j.job_id) for j in found)})" if found else "")
            + "; deploy the bundle again (databricks bundle deploy) so the job and the script match"
        )
    params = {p.name: p.default for p in (found[0].settings.parameters or [])}
    missing = [name for name in PARAMETERS if name not in params]
    if missing:
        raise ConfigError(f"job {found[0].job_id}: no job parameter(s) {', '.join(missing)} (resources/*.job.yml)")
    # The values of the run this task belongs to (`--params` given to `bundle run` override the defaults): the job
    # allows one run at a time (max_concurrent_runs: 1), so the active run is this one.
    active = list(jobs.list_runs(job_id=found[0].job_id, active_only=True))
    if len(active) == 1:
        for p in getattr(active[0], "job_parameters", None) or []:
            value = p.value if p.value is not None else p.default
            if p.name in params and value is not None:
                params[p.name] = value
        params["run_id"] = str(active[0].run_id)
    return params


def task_argv(command: str, params: dict[str, str], settings: list[str], run_id: str) -> list[str]:
    """The `lakesynth finetune` arguments equivalent to this task: the config synced beside the script (the bundle's
    `conf/`), the job's catalog/schema/volume and student, the script's own fixed settings last."""
    files = Path(command).resolve().parent.parent  # ${workspace.file_path}: the script is in its resources/
    argv = ["finetune", "--config", str(files / "conf" / "lakesynth.yml")]
    for name in ("catalog", "schema", "volume"):
        argv += [f"--{name}", params[name]]
    argv += ["--run-id", run_id, "--set", f"finetune.base_model={params['base_model']}"]
    for setting in settings:
        argv += ["--set", setting]
    return argv


def train(cfg, rt=None) -> dict:
    """Train (or find the finished adapter of) `cfg` on this node, into the Volume (`rt`: default, this node's
    runtime, with /Volumes paths whatever the node reports); record it for evaluate. Returns the figures."""
    from lakesynth.core.runtime import Runtime
    from lakesynth.errors import StageError
    from lakesynth.training import adapters
    from lakesynth.training.backends import local

    rt = rt or dataclasses.replace(Runtime.resolve(cfg), databricks=True)
    files = adapters.split_files(rt, cfg.finetune.method, cfg.finetune.dataset)
    for split, path in files.items():
        if not Path(path).is_file():
            raise StageError(f"finetune: no {split} file at {path}; the job's format task writes it first")
    result = local.fine_tune(cfg, rt, files)
    inputs = adapters.input_fingerprint(cfg, files)
    adapter = result.files["adapter"]
    # What the evaluate task looks up for backend ai_runtime (adapters.trained): one whole-file write.
    adapters.Submitted(rt, inputs).write(
        {"backend": "ai_runtime", "run_id": cfg.run_id, "run": "ai_runtime_task", "adapter": adapter}
    )
    return {"rows_out": result.rows_out, "adapter": adapter, **result.metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lakesynth.training.ai_runtime", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--command", required=True, help="the path of the script the ai_runtime_task runs ($0)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from databricks.sdk import WorkspaceClient

    from lakesynth.core import command

    params = job_parameters(WorkspaceClient().jobs, args.command)
    if params["finetune_backend"] == "none":
        print("finetune: skipped (job parameter finetune_backend is none)", flush=True)
        return
    run_id = params.get("run_id") or "ai_runtime-" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    cfg = command.build_config(command.parse_args(task_argv(args.command, params, args.settings, run_id)))
    print(json.dumps(train(cfg)), flush=True)


if __name__ == "__main__":
    try:
        main()
    except LakesynthError as exc:  # a task failure with the reason, not a trace
        print(f"finetune: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
