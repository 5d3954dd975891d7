"""The `ai_runtime` backend: the training script (train.py) as a one-time `ai_runtime_task` run on Databricks
serverless GPU, submitted from wherever `lakesynth finetune` runs and waited for. (In the bundle's jobs the
`finetune` task is itself an `ai_runtime_task`: training/ai_runtime.py is what its GPU node runs.)

Once per distinct input: the same split files and settings reuse the run that finished (or wait for the one still
running); a failed or cancelled run is submitted again. The run's request is built by pure functions, so tests check
it exactly.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from lakesynth.config import Config
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import StageResult
from lakesynth.errors import StageError
from lakesynth.training import adapters

# What a one-time run's GPU node installs before running train.py: pyproject's `train` extra, pinned (torch
# and MLflow come with the AI Runtime environment; nothing here is left to float to a new release).
AI_RUNTIME_REQUIREMENTS = (
    "transformers==5.23.0",
    "peft==0.21.2",
    "trl==1.16.0",
    "datasets==5.2.0",
    "accelerate==1.16.0",
)


def ai_runtime_command(cfg: Config, rt: Runtime, files: dict[str, str], script_dir: str) -> str:
    """The shell script every GPU node runs: install the training stack, run train.py, log to MLflow."""
    ft = cfg.finetune
    args = [
        "python",
        f"{script_dir}/train.py",
        "--method",
        ft.method,
        "--train",
        files["train"],
        "--val",
        files["val"],
        "--out",
        adapters.output_dir(cfg, rt),
        "--max-steps",
        str(ft.max_steps),
        "--learning-rate",
        str(ft.learning_rate),
        "--lora-r",
        str(ft.lora_r),
        "--batch-size",
        str(ft.batch_size),
        "--max-length",
        str(ft.max_length),
        "--val-examples",
        str(ft.val_examples),
        "--mlflow",
    ]
    if ft.method == "dpo":
        args += ["--beta", str(ft.beta)]
    if ft.base_model:
        args += ["--model", ft.base_model]
    return (
        "#!/bin/bash\nset -euo pipefail\n"
        f"pip install --quiet {' '.join(shlex.quote(r) for r in AI_RUNTIME_REQUIREMENTS)}\n"
        f"{shlex.join(args)}\n"
    )


def ai_runtime_submission(cfg: Config, command_path: str) -> dict:
    """The one-time run (`POST /api/2.2/jobs/runs/submit`) with its `ai_runtime_task`."""
    ft = cfg.finetune
    name = f"lakesynth-{ft.method}-{cfg.run_id}"
    directory = {"mlflow_experiment_directory": ft.experiment_directory} if ft.experiment_directory else {}
    return {
        "run_name": name,
        "tasks": [
            {
                "task_key": ft.method,
                "ai_runtime_task": {
                    "experiment": ft.training_experiment,
                    **directory,
                    "mlflow_run": name,
                    "deployments": [
                        {
                            "name": "trainer",
                            "command_path": command_path,
                            "compute": {
                                "accelerator_type": ft.accelerator_type,
                                "accelerator_count": ft.accelerator_count,
                            },
                        }
                    ],
                },
            }
        ],
    }


def _workspace():
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient()


def fine_tune(cfg: Config, rt: Runtime, files: dict[str, str]) -> StageResult:
    """A Databricks fine-tune, once per distinct input (the module docstring says how)."""
    backend = _AiRuntime(cfg, rt, files)
    record = adapters.Submitted(rt, adapters.input_fingerprint(cfg, files))
    earlier = record.read()
    if earlier and earlier.get("backend") == cfg.finetune.backend:
        state = backend.state(earlier["run"])
        if state == "SUCCESS":
            return _remote_result(earlier, reused=True)
        if state == "RUNNING":
            return _finish(backend, earlier, cfg)
    earlier = {"backend": cfg.finetune.backend, "run_id": cfg.run_id, **backend.submit()}
    record.write(earlier)
    return _finish(backend, earlier, cfg)


def _finish(backend, submitted: dict, cfg: Config) -> StageResult:
    """Wait for the run; past the timeout it is cancelled, so no GPU keeps running for a task that gave up."""
    ft = cfg.finetune
    deadline = time.monotonic() + ft.timeout_minutes * 60
    while (state := backend.state(submitted["run"])) == "RUNNING":
        if time.monotonic() > deadline:
            backend.cancel(submitted["run"])
            raise StageError(
                f"finetune: {ft.backend} run {submitted['run']} did not finish within {ft.timeout_minutes:g} "
                "minutes and was cancelled; a rerun submits it again"
            )
        time.sleep(ft.poll_seconds)
    if state != "SUCCESS":
        raise StageError(f"finetune: {ft.backend} run {submitted['run']} ended {backend.detail(submitted['run'])}")
    return _remote_result(submitted, reused=False)


def _remote_result(submitted: dict, *, reused: bool) -> StageResult:
    """A finished remote run's result; `reused` names the run (of this job) that paid for it."""
    metrics = {"databricks_run": submitted["run"], **({"reused": submitted["run_id"]} if reused else {})}
    files = {"adapter": submitted["adapter"]} if "adapter" in submitted else {}
    return StageResult(rows_out=0 if reused else 1, files=files, metrics=metrics)


class _AiRuntime:
    """The training script as a one-time `ai_runtime_task` run (Jobs API 2.2) on serverless GPU."""

    def __init__(self, cfg: Config, rt: Runtime, files: dict[str, str]) -> None:
        self.cfg, self.rt, self.files = cfg, rt, files
        self.client = _workspace()

    def submit(self) -> dict:
        import base64

        from databricks.sdk.service.workspace import ImportFormat

        from lakesynth.training import train

        cfg, client = self.cfg, self.client
        me = client.current_user.me().user_name
        script_dir = cfg.finetune.script_dir or f"/Workspace/Users/{me}/.lakesynth/{cfg.run_id}"
        client.workspace.mkdirs(script_dir)
        sources = {
            "train.py": Path(train.__file__).read_text(encoding="utf-8"),
            "run.sh": ai_runtime_command(cfg, self.rt, self.files, script_dir),
        }
        for name, text in sources.items():
            client.workspace.import_(
                f"{script_dir}/{name}",
                content=base64.b64encode(text.encode()).decode(),
                format=ImportFormat.AUTO,
                overwrite=True,
            )
        body = ai_runtime_submission(cfg, f"{script_dir}/run.sh")
        submitted = client.api_client.do("POST", "/api/2.2/jobs/runs/submit", body=body)
        return {"run": submitted["run_id"], "adapter": f"{adapters.output_dir(cfg, self.rt)}/adapter"}

    def _get(self, run) -> dict:
        return self.client.api_client.do("GET", "/api/2.2/jobs/runs/get", query={"run_id": run})["state"]

    def state(self, run) -> str:
        state = self._get(run)
        if state.get("life_cycle_state") not in ("TERMINATED", "SKIPPED", "INTERNAL_ERROR"):
            return "RUNNING"
        return "SUCCESS" if state.get("result_state") == "SUCCESS" else "FAILED"

    def detail(self, run) -> str:
        state = self._get(run)
        return f"{state.get('result_state') or state.get('life_cycle_state')}: {state.get('state_message', '')}"

    def cancel(self, run) -> None:
        self.client.api_client.do("POST", "/api/2.2/jobs/runs/cancel", body={"run_id": run})
