"""The `run_log` table: one row per stage run (ok, skipped or failed), for SQL without MLflow.

The runner writes it for every task; the registry lists its contract beside the stages' tables. It is the run's
record in the lakehouse, so it lives in core: MLflow (report/tracking.py) is an optional view of the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from lakesynth.config import Config
from lakesynth.core import tables
from lakesynth.core.tables import L, S

log = logging.getLogger(__name__)
LONG_TEXT = ("template", "rules", "system_prompt")

D = tables.T.DoubleType()
RUN_LOG = tables.contract(
    "run_log",
    [
        ("entry_id", S),
        ("task", S),
        ("stage", S),
        ("status", S),
        ("reason", S),
        ("model", S),
        ("prompt_version", S),
        ("parameters", S),
        ("rows_in", L),
        ("rows_out", L),
        ("errors", L),
        ("prompt_tokens", L),
        ("completion_tokens", L),
        ("cost_usd", D),
        ("seconds", D),
        ("files", S),
        ("metrics", S),
    ],
    key="entry_id",
    parent="run_id",
)


def record(ctx, task: str, stage, entry: dict[str, Any], files: dict[str, str]) -> None:
    """One `run_log` row for a stage run (ok, skipped or failed): which run, stage, model, parameters and prompt
    made what, how many rows, tokens, cost and seconds, and the files it wrote. A rerun of the task in the same
    run replaces its row. The parameters are the stage's config section with long texts hashed; no secret is in
    the config. A failure to write it is a warning, never the stage's failure."""
    try:
        frame = ctx.spark.createDataFrame([_row(ctx, task, stage, entry, files)], schema=RUN_LOG.row_schema)
        tables.upsert(ctx.spark, ctx.rt, RUN_LOG, frame, run_id=ctx.cfg.run_id)
    except Exception as exc:  # noqa: BLE001 - the run log must never fail the stage it describes
        log.warning("run_log: could not record %s: %s", task, exc)
        print(f"{task}: warning: run_log not written ({type(exc).__name__}: {exc})", flush=True)


def record_stopped(ctx, task: str, stage, entry: dict[str, Any]) -> None:
    """The `run_log` row of the stage a Ctrl-C stopped (status `stopped`), written past the engine, which is
    stopping then (tables.upsert_files; on Databricks, where the engine goes on, through it). Raises what fails:
    the stop's recorder says it."""
    if ctx.rt.databricks:
        record(ctx, task, stage, entry, {})
        return
    tables.upsert_files(ctx.rt, RUN_LOG, [_row(ctx, task, stage, entry, {})], run_id=ctx.cfg.run_id)


def _row(ctx, task: str, stage, entry: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    section = _section(ctx.cfg, stage.config_key) if stage is not None and stage.config is not None else {}
    row = {
        "entry_id": f"{ctx.cfg.run_id}|{task}",
        "task": task,
        "stage": stage.name if stage is not None else task,
        "status": entry["status"],
        "reason": entry.get("error") or entry.get("reason"),
        "model": entry.get("model"),  # as the LLM loop called it and recorded it on the rows
        "prompt_version": entry.get("prompt_version"),
        "parameters": json.dumps(params_of(section), sort_keys=True),
        **{k: entry.get(k) for k in ("rows_in", "rows_out", "errors", "prompt_tokens", "completion_tokens")},
        "cost_usd": entry.get("cost_usd"),
        "seconds": entry.get("seconds"),
        "files": json.dumps(files, sort_keys=True) if files else None,
    }
    # The stage's own figures (a check's kept and dropped, the evaluation's scores ...), as in the summary.
    own = {k: v for k, v in entry.items() if k not in row and k not in ("error", "cost_usd")}
    row["metrics"] = json.dumps(own, sort_keys=True, default=str) if own else None
    return row


def _section(cfg: Config, dotted: str) -> dict:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value.model_dump() if hasattr(value, "model_dump") else {}


def params_of(section: dict) -> dict[str, str]:
    """A config section as `params` flattens the whole config: long texts as short hashes."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else key, child)
        elif prefix.rsplit(".", 1)[-1] in LONG_TEXT and value:
            flat[f"{prefix}_sha"] = hashlib.sha256(str(value).encode()).hexdigest()[:12]
        else:
            flat[prefix] = str(value)[:500]

    walk("", section)
    return flat
