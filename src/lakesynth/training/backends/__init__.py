"""How the finetune stage trains: one module per backend, each a `Backend` (finetune.backend names it).

- `local` (local.py): the project's TRL LoRA script (train.py, SFT or DPO) on this machine, CPU or GPU.
- `ai_runtime` (ai_runtime.py): the same training as a one-time run on Databricks serverless GPU, submitted and
  waited for.
"""

from __future__ import annotations

from typing import Protocol

from lakesynth.config import Config
from lakesynth.core.runtime import Runtime
from lakesynth.core.stage import StageResult


class Backend(Protocol):
    """Train on the split files (train, val) or find the adapter trained on the same ones; the stage's result."""

    def __call__(self, cfg: Config, rt: Runtime, files: dict[str, str]) -> StageResult: ...
