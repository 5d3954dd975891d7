"""What both export stages share (export: the Q&A job's chat and preference data; tool_export: the function-calling
job's tool-calling data): the settings, writing one dataset config as a `datasets` folder and Parquet, the card's
metadata, what made the data (from run_log), and the push to the Hugging Face Hub.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import EnvName, Section, secret_from_env
from lakesynth.core import funnel, registry
from lakesynth.errors import StageSkipped


class ExportConfig(Section):
    enabled: bool = Field(False, description="Write the final dataset as a datasets folder and Parquet, with a card.")
    license: str = Field("other", description="The dataset card's license (an SPDX id such as cc-by-4.0, or other).")
    hub_repo: str = Field("", description="Hugging Face dataset repo (org/name) to push to, with HF_TOKEN set.")
    token_env: EnvName = Field("HF_TOKEN", description="Environment variable holding the Hugging Face token.")
    private: bool = Field(True, description="Push to the Hub as a private dataset.")


def datasets_module():
    try:
        import datasets
    except ImportError as exc:
        raise StageSkipped("the export needs the datasets package: pip install datasets==5.2.0") from exc
    return datasets


def write_config(folder: Path, name: str, splits: dict[str, pd.DataFrame], parquet: str):
    """One dataset config: `folder/name` (DatasetDict.save_to_disk) and `folder/parquet/<parquet>/<split>.parquet`
    (`parquet` "" for the default config's `parquet/<split>.parquet`); returns the DatasetDict."""
    datasets = datasets_module()
    dataset = datasets.DatasetDict({s: datasets.Dataset.from_pandas(rows) for s, rows in splits.items()})
    dataset.save_to_disk(str(folder / name))
    target = folder / "parquet" / parquet if parquet else folder / "parquet"
    target.mkdir(parents=True, exist_ok=True)
    for split, rows in dataset.items():
        rows.to_parquet(str(target / f"{split}.parquet"))
    return dataset


def config_metadata(name: str, splits, parquet: str) -> str:
    """A `configs` entry of the card's YAML metadata: the config's Parquet file per split."""
    where = f"parquet/{parquet}/" if parquet else "parquet/"
    files = "\n".join(f"  - split: {s}\n    path: {where}{s}.parquet" for s in sorted(splits))
    return f"- config_name: {name}\n  data_files:\n{files}"


def made_by(ctx, stages: tuple[str, ...]) -> dict:
    """Models and prompt versions of `stages` (those of the job that made the data, from run_log: both jobs may
    log to one schema), the config hash and the run id."""
    cfg = ctx.cfg
    runs = ctx.read("run_log").where(F.col("model").isNotNull() & (F.col("status") == "ok"))
    runs = runs.where(F.col("stage").isin(list(stages)))
    found: dict[str, dict[str, set]] = {}
    for r in runs.select("stage", "model", "prompt_version").distinct().collect():
        found.setdefault(r.stage, {"models": set(), "prompt_versions": set()})
        found[r.stage]["models"].add(r.model)
        found[r.stage]["prompt_versions"].add(r.prompt_version)
    config = cfg.model_dump_json(exclude={"run_id"}).encode()
    yields, problem = funnel.guarded(lambda: funnel.of_run(ctx, registry.default_stages()))  # the job's funnel
    if problem:  # the card goes without it: the data is the export's work, its description is not
        print(f"export: warning: {problem}", flush=True)
    return {
        "run_id": cfg.run_id,
        "config_sha256": hashlib.sha256(config).hexdigest()[:16],
        "made_by": {k: {n: sorted(v) for n, v in d.items()} for k, d in sorted(found.items())},
        **({"funnel": yields} if yields else {"funnel_error": problem} if problem else {}),
    }


def provenance_sections(made: dict) -> str:
    """The card's last sections: what made the data (made_by: stage, models, prompt versions) and what each check
    dropped (`made["dropped"]`: reason -> rows)."""
    made_rows = "\n".join(
        f"| {stage} | {', '.join(d['models'])} | {', '.join(p for p in d['prompt_versions'] if p)} |"
        for stage, d in made["made_by"].items()
    )
    dropped_rows = "\n".join(f"| {k} | {v} |" for k, v in made["dropped"].items()) or "| (none) | 0 |"
    return f"""{funnel_section(made.get("funnel"))}## What made it

| stage | model | prompt version |
|---|---|---|
{made_rows}

## Dropped by the checks (the first check each dropped pair failed)

| reason | rows |
|---|---|
{dropped_rows}"""


def write_card(folder: Path, card: str, made: dict) -> None:
    """The dataset card (README.md) and what made the data (provenance.json), beside the exported configs."""
    (folder / "README.md").write_text(card, encoding="utf-8")
    (folder / "provenance.json").write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")


def push(export: ExportConfig, configs: dict[str, object]) -> str:
    """Push each config (name -> DatasetDict; "default" first) to `export.hub_repo` when a token is set; the
    summary's `hub` line either way."""
    token = secret_from_env(export.token_env)
    if not export.hub_repo:
        return "not pushed: export.hub_repo is empty"
    if not token:
        return f"not pushed: {export.token_env} is not set"
    for name, dataset in configs.items():
        extra = {} if name == "default" else {"config_name": name}
        dataset.push_to_hub(export.hub_repo, token=token, private=export.private, **extra)
    return export.hub_repo


def funnel_section(found: dict | None) -> str:
    """The card's yield funnel: generated, what each step kept and dropped (and why), kept per split, the tokens
    (cost) per 1,000 kept, and what ended with none kept; "" without a funnel."""
    if not found:
        return ""
    steps = "\n".join(
        f"| {s['step']} | {s['in']} | {s['dropped']} | {s['kept']} | {funnel.counts(s['reasons'])} |"
        for s in found["steps"]
    )
    splits = funnel.counts(found["splits"])
    spend = found.get("spend", {})
    per = [f"{spend['tokens_per_1000_kept']:,} tokens"] if "tokens_per_1000_kept" in spend else []
    per += [f"${spend['cost_per_1000_kept_usd']}"] if "cost_per_1000_kept_usd" in spend else []
    warnings = "".join(f"- warning: {w}\n" for w in found.get("warnings", []))
    pending = f"{found['pending']} pending, " if found.get("pending") else ""  # a step ahead has not run yet
    return f"""## Yield funnel

{found["generated"]} generated, {pending}{found["kept"]} kept ({splits or "no split yet"}){
        f"; per 1,000 kept: {' or '.join(per)}" if per else ""
    }. Every generated row is kept or counted once, under the first step that dropped it.

| step | in | dropped | kept | reasons |
|---|---|---|---|---|
| generated | {found["generated"]} | 0 | {found["generated"]} | |
{steps}

{warnings}
"""
