"""Export stage: the final dataset as a Hugging Face `datasets` folder and Parquet, with its dataset card.

`<volume>/export/<run_id>/`: `dataset/` (`DatasetDict.save_to_disk`, one split per split of `training_chat`),
`parquet/<split>.parquet`, the kept preference pairs (when the preference stage made any) in `preference/` and
`parquet/preference/<split>.parquet`, and `README.md`, a Hugging Face dataset card (YAML metadata with the license
and the splits, then what made it: teacher and judge models, prompt versions, config hash, run id; counts per split
and per topic; drop counts per check). With `export.hub_repo` set and a Hugging Face token in `HF_TOKEN`, the
dataset is pushed to the Hub; otherwise the summary says why not. Off by default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import Section, secret_from_env
from lakesynth.errors import StageError, StageSkipped
from lakesynth.stage import RunContext, Stage, StageResult

CHECKS = ("question_verdicts", "pair_verdicts")  # every check's drops: the critic's, then each pair's first


class ExportConfig(Section):
    enabled: bool = Field(False, description="Write the final dataset as a datasets folder and Parquet, with a card.")
    license: str = Field("other", description="The dataset card's license (an SPDX id such as cc-by-4.0, or other).")
    hub_repo: str = Field("", description="Hugging Face dataset repo (org/name) to push to, with HF_TOKEN set.")
    token_env: str = Field("HF_TOKEN", description="Environment variable holding the Hugging Face token.")
    private: bool = Field(True, description="Push to the Hub as a private dataset.")


def examples(ctx: RunContext):
    """training_chat as one pandas frame per split: each message as {role, content} (and tool fields when set)."""
    chat = ctx.read("training_chat").orderBy("example_id").toPandas()
    chat["messages"] = [
        [{k: v for k, v in dict(m).items() if v is not None} for m in messages] for messages in chat["messages"]
    ]
    columns = ["example_id", "question_id", "seed_id", "topic", "shape", "messages", "n_tokens"]
    return {split: rows[columns].reset_index(drop=True) for split, rows in chat.groupby("split")}


def preference_pairs(ctx: RunContext) -> dict:
    """The kept preference pairs as one pandas frame per split (the split of their training_chat example):
    `prompt`, `chosen`, `rejected` as message lists, as TRL's DPO trainer reads them, with ratings and models."""
    kept = ctx.read("training_preference").where("keep")
    pairs = kept.join(ctx.read("training_chat").select("question_id", "split"), "question_id")
    frame = pairs.orderBy("example_id").toPandas()
    if frame.empty:
        return {}
    for column in ("messages", "chosen", "rejected"):
        frame[column] = [[{"role": m["role"], "content": m["content"]} for m in ms] for ms in frame[column]]
    frame = frame.rename(columns={"messages": "prompt"})
    columns = ["example_id", "question_id", "topic", "prompt", "chosen", "rejected"]
    columns += ["chosen_rating", "rejected_rating", "chosen_model", "rejected_model"]
    return {split: rows[columns].reset_index(drop=True) for split, rows in frame.groupby("split")}


def provenance(ctx: RunContext) -> dict:
    """What made the dataset: models and prompt versions per LLM stage (from run_log), the config hash, run id,
    and each check's drop counts."""
    cfg = ctx.cfg
    runs = ctx.read("run_log").where(F.col("model").isNotNull() & (F.col("status") == "ok"))
    made_by = {}
    for r in runs.select("stage", "model", "prompt_version").distinct().collect():
        made_by.setdefault(r.stage, {"models": set(), "prompt_versions": set()})
        made_by[r.stage]["models"].add(r.model)
        made_by[r.stage]["prompt_versions"].add(r.prompt_version)
    # A pair's first failed check (pair_verdicts), and the critic's drops, whose questions were never answered.
    dropped: dict[str, int] = {}
    for table in ("question_verdicts", "pair_verdicts"):
        for r in ctx.read(table, kept=False).where("NOT keep").groupBy("drop_reason").count().collect():
            dropped[r.drop_reason] = dropped.get(r.drop_reason, 0) + r["count"]
    config = cfg.model_dump_json(exclude={"run_id"}).encode()
    return {
        "run_id": cfg.run_id,
        "config_sha256": hashlib.sha256(config).hexdigest()[:16],
        "made_by": {k: {n: sorted(v) for n, v in d.items()} for k, d in sorted(made_by.items())},
        "dropped": dict(sorted(dropped.items())),
    }


def card(ctx: RunContext, splits: dict, made: dict, pairs: dict) -> str:
    """A Hugging Face dataset card: YAML metadata the Hub reads, then what the dataset is and what made it."""
    cfg = ctx.cfg
    files = "\n".join(f"  - split: {s}\n    path: parquet/{s}.parquet" for s in sorted(splits))
    if pairs:
        files += "\n- config_name: preference\n  data_files:\n" + "\n".join(
            f"  - split: {s}\n    path: parquet/preference/{s}.parquet" for s in sorted(pairs)
        )
    topics = {}
    for split, rows in splits.items():
        for topic, n in rows["topic"].value_counts().items():
            topics.setdefault(topic, {})[split] = int(n)
    topic_rows = "\n".join(
        f"| {t} | " + " | ".join(str(c.get(s, 0)) for s in sorted(splits)) + " |" for t, c in sorted(topics.items())
    )
    made_rows = "\n".join(
        f"| {stage} | {', '.join(d['models'])} | {', '.join(p for p in d['prompt_versions'] if p)} |"
        for stage, d in made["made_by"].items()
    )
    dropped_rows = "\n".join(f"| {k} | {v} |" for k, v in made["dropped"].items()) or "| (none) | 0 |"
    return f"""---
license: {ctx.cfg.export.license}
task_categories:
- text-generation
language:
- en
tags:
- synthetic
- lakesynth
configs:
- config_name: default
  data_files:
{files}
---

# {cfg.use_case.name}: synthetic chat data made by lakesynth

Chat examples (`messages`: system, user, assistant) for fine-tuning, generated by a teacher model from seed
questions and the use case's rules, then checked and deduplicated.

- Run: `{made["run_id"]}`; config sha256 `{made["config_sha256"]}`
- Examples per split: {", ".join(f"{s} {len(r)}" for s, r in sorted(splits.items()))}
- Preference pairs per split (config `preference`: prompt, chosen, rejected): {
        ", ".join(f"{s} {len(r)}" for s, r in sorted(pairs.items())) or "none"
    }

## Examples per topic and split

| topic | {" | ".join(sorted(splits))} |
|---|{"---|" * len(splits)}
{topic_rows}

## What made it

| stage | model | prompt version |
|---|---|---|
{made_rows}

## Dropped by the checks (the first check each dropped pair failed)

| reason | rows |
|---|---|
{dropped_rows}
"""


def run(ctx: RunContext) -> StageResult:
    export = ctx.cfg.export
    if not export.enabled:
        return StageResult(metrics={"disabled": "export.enabled is false"})
    try:
        import datasets
    except ImportError as exc:
        raise StageSkipped("the export needs the datasets package: pip install datasets==5.2.0") from exc
    splits = examples(ctx)
    if not splits:
        raise StageError("export: training_chat has no examples; run the format stage first")
    folder = Path(ctx.rt.files_dir(f"export/{ctx.cfg.run_id}"))
    (folder / "parquet").mkdir(parents=True, exist_ok=True)
    dataset = datasets.DatasetDict({s: datasets.Dataset.from_pandas(rows) for s, rows in splits.items()})
    dataset.save_to_disk(str(folder / "dataset"))
    for split, rows in dataset.items():
        rows.to_parquet(str(folder / "parquet" / f"{split}.parquet"))
    pairs = preference_pairs(ctx)
    preference = datasets.DatasetDict({s: datasets.Dataset.from_pandas(rows) for s, rows in pairs.items()})
    if pairs:
        preference.save_to_disk(str(folder / "preference"))
        (folder / "parquet" / "preference").mkdir(exist_ok=True)
        for split, rows in preference.items():
            rows.to_parquet(str(folder / "parquet" / "preference" / f"{split}.parquet"))
    made = provenance(ctx)
    (folder / "README.md").write_text(card(ctx, splits, made, pairs), encoding="utf-8")
    (folder / "provenance.json").write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    metrics = {f"{s}_examples": len(r) for s, r in sorted(splits.items())}
    metrics.update({f"{s}_preference_pairs": len(r) for s, r in sorted(pairs.items())})
    token = secret_from_env(export.token_env)
    if export.hub_repo and token:
        dataset.push_to_hub(export.hub_repo, token=token, private=export.private)
        if pairs:
            preference.push_to_hub(export.hub_repo, config_name="preference", token=token, private=export.private)
        metrics["hub"] = export.hub_repo
    else:
        metrics["hub"] = (
            f"not pushed: {export.token_env} is not set" if export.hub_repo else "not pushed: export.hub_repo is empty"
        )
    rows = sum(len(r) for r in splits.values())
    return StageResult(rows_in=rows, rows_out=rows, files={"export": str(folder)}, metrics=metrics)


STAGE = Stage(
    name="export",
    help="write the final dataset as a Hugging Face datasets folder and Parquet with its dataset card",
    run=run,
    reads=("training_chat", "training_preference", *CHECKS),
    config=ExportConfig,
)
