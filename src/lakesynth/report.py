"""What a stage reports back, and the run summary JSON written by `--summary`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth import llm
from lakesynth.config import Config
from lakesynth.errors import StageError


@dataclass
class StageResult:
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    tables: list = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def line(self, stage: str, seconds: float) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.metrics.items())
        return f"{stage}: ok, {self.rows_in} in, {self.rows_out} out, {self.errors} errors{extra}, {seconds:.1f} s"


def llm_totals(rows: DataFrame, cfg: Config, *, group: str) -> dict:
    """Tokens, failed rows and estimated cost of the rows a stage wrote in this run."""
    agg = rows.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct(F.when(F.col("error").isNotNull(), F.col(group))).alias("failed"),
        F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("prompt_tokens"),
        F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("completion_tokens"),
    ).collect()[0]
    metrics = {"prompt_tokens": int(agg.prompt_tokens), "completion_tokens": int(agg.completion_tokens)}
    cost = llm.cost(agg.prompt_tokens, agg.completion_tokens, cfg.teacher)
    if cost is not None:
        metrics["cost_usd"] = round(cost, 4)
    return {"rows": agg.rows, "failed": agg.failed, "metrics": metrics}


def check_failure_rate(stage: str, failed: int, attempted: int, limit: float, rows: DataFrame) -> None:
    """Fail the stage (its rows are already written, errors included) when too many rows failed."""
    if attempted and failed / attempted > limit:
        sample = [r.error for r in rows.where("error IS NOT NULL").select("error").limit(3).collect()]
        raise StageError(
            f"{stage}: {failed} of {attempted} requests failed (max_failure_rate {limit:.0%}); "
            f"rows and errors are written, a rerun retries only the failed ones. First errors:\n  "
            + "\n  ".join(sample)
        )
