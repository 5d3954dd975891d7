"""Where fine-tunes are found: the split files a method trains on, their fingerprint, and the finished adapter
for them (a local run's `metrics.json`, a remote run's submission record in the Volume).

The finetune stage records what it trained; the evaluate stage finds it here, without either importing the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lakesynth.config import Config
from lakesynth.core.runtime import Runtime


def output_dir(cfg: Config, rt: Runtime) -> str:
    return rt.files_dir(f"finetune/{cfg.run_id}")


def split_files(rt: Runtime, method: str = "sft", dataset: str = "training_chat") -> dict[str, str]:
    """The train and val JSONL the method trains on: the chat (or tool-calling) examples' files, or the
    preference stage's DPO pairs."""
    folder = rt.files_dir(dataset) if method == "sft" else rt.files_dir("training_preference") + "/dpo"
    return {"train": f"{folder}/train.jsonl", "val": f"{folder}/val.jsonl"}


def input_fingerprint(cfg: Config, files: dict[str, str]) -> str:
    """Hash of what decides a local fine-tune: the split files' bytes, the training settings, the split seed."""
    digest = hashlib.sha256()
    for split in sorted(files):
        digest.update(Path(files[split]).read_bytes())
    settings = cfg.finetune.model_dump(exclude={"poll_seconds", "timeout_minutes", "backend"})
    digest.update(json.dumps({"finetune": settings, "seed": cfg.format.seed}, sort_keys=True).encode())
    return digest.hexdigest()


def trained(cfg: Config, rt: Runtime) -> dict | None:
    """The finished fine-tune of the current split files and settings: its `student` (empty: the packaged one),
    `adapter` and `inputs` fingerprint; None when there is none (what the evaluate stage compares)."""
    files = split_files(rt, cfg.finetune.method, cfg.finetune.dataset)
    if cfg.finetune.backend == "none" or not all(Path(p).is_file() for p in files.values()):
        return None
    inputs = input_fingerprint(cfg, files)
    if cfg.finetune.backend == "local":
        found = trained_on(rt, inputs)
        return {**found[0], "inputs": inputs} if found else None
    record = Submitted(rt, inputs).read() or {}
    if not Path(record.get("adapter", ""), "adapter_config.json").is_file():
        return None
    return {"student": cfg.finetune.base_model, "adapter": record["adapter"], "inputs": inputs}


def trained_on(rt: Runtime, inputs: str) -> tuple[dict, str] | None:
    """The metrics and folder of an earlier local fine-tune on exactly these inputs, if its adapter is still there."""
    for path in sorted(Path(rt.files_dir("finetune")).glob("*/metrics.json")):
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if metrics.get("inputs") == inputs and Path(metrics.get("adapter", ""), "adapter_config.json").is_file():
            return metrics, str(path.parent)
    return None


class Submitted:
    """Where a remote fine-tune's submission is recorded (`finetune/_submitted/<inputs>.json` in the Volume), so
    a task retry or a scheduled run on unchanged data finds the run it already paid for instead of starting one."""

    def __init__(self, rt: Runtime, inputs: str) -> None:
        self.path = Path(rt.files_dir("finetune")) / "_submitted" / f"{inputs}.json"

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(record) + "\n", encoding="utf-8")  # one write: a Volume cannot append
