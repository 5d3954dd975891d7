"""What the two evaluate stages (the Q&A job's evaluate, the tools job's tool_evaluate) share: the fine-tune they
evaluate, the held-out split its students answer, and the student's folder."""

from __future__ import annotations

from pathlib import Path

from lakesynth.config import Config
from lakesynth.core.runtime import Runtime
from lakesynth.errors import StageSkipped
from lakesynth.training import adapters, student


def fine_tuned(cfg: Config, rt: Runtime, data: str) -> dict:
    """The fine-tune on the current split files (adapters.trained), or StageSkipped saying why there is none to
    evaluate; `data` names what it trains on, for the message."""
    if cfg.finetune.backend == "none":  # off on purpose: say so, not that a fine-tune went missing
        raise StageSkipped("no fine-tune to evaluate: finetune.backend is none")
    trained = adapters.trained(cfg, rt)
    if trained is None:
        raise StageSkipped(f"no fine-tuned adapter on the current {data} here: run the finetune stage first")
    return trained


def held_out(cfg: Config, split: str = "auto") -> str:
    """The split the students answer: `split` as set, or (auto) the test split where the format stage makes one,
    else val."""
    if split != "auto":
        return split
    return "test" if cfg.format.test_fraction else "val"


def student_dir(cfg: Config, trained: dict) -> str:
    """The folder of the student the fine-tune started from: its base model, or the packaged student."""
    return trained["student"] or str(student.packaged_student(Path(cfg.model_cache).expanduser()))
