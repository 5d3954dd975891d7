"""Fine-tune stage: the train/val JSONL -> a fine-tuned student, with one of the backends (backends/).

`method` picks what is learned: `sft` the answers in the format stage's chat JSONL, `dpo` the preference
stage's chosen-over-rejected pairs.

- `local`: the project's TRL LoRA script (train.py, SFT or DPO) on this machine, CPU or GPU.
- `ai_runtime`: the same training on Databricks serverless GPU. In the bundle's jobs the `finetune` task is
  itself an `ai_runtime_task` (training/ai_runtime.py is what its GPU node runs); `lakesynth finetune` run
  from a laptop with this backend submits a one-time run of the same task and waits for it.
- `none`: no fine-tune (the stage is skipped).
`foundation_model` (Foundation Model Fine-tuning, `databricks-genai`) is refused: Databricks removed that API
on 2026-08-14.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from lakesynth.config import Section
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.errors import StageError, StageSkipped
from lakesynth.training.adapters import split_files
from lakesynth.training.backends import Backend, ai_runtime, local

BACKENDS: dict[str, Backend] = {"local": local.fine_tune, "ai_runtime": ai_runtime.fine_tune}
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
    val_examples: int = Field(
        200, ge=1, description="Validation examples the loss is measured on, before and after (the split's first)."
    )
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
    return BACKENDS[ft.backend](cfg, rt, files)


STAGE = Stage(
    name="finetune",
    help="fine-tune a student on the JSONL (backend local, ai_runtime or none)",
    run=run,
    config=FinetuneConfig,
    # It reads files, not tables: the JSONL of whichever of these its job has (finetune.method, finetune.dataset).
    after=("format", "preference", "tool_format"),
)
