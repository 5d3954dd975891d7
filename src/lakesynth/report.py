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


@dataclass
class LLMTotals:
    """Rows, failed requests and tokens of what an LLM stage wrote in this invocation, summed over chunks."""

    rows: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, rows: DataFrame, *, group: str) -> None:
        agg = rows.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(F.when(F.col("error").isNotNull(), F.col(group))).alias("failed"),
            F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("prompt_tokens"),
            F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("completion_tokens"),
        ).collect()[0]
        self.rows += agg.rows
        self.failed += agg.failed
        self.prompt_tokens += int(agg.prompt_tokens)
        self.completion_tokens += int(agg.completion_tokens)
        if agg.failed and len(self.errors) < 3:
            self.errors += [r.error for r in rows.where("error IS NOT NULL").select("error").limit(3).collect()]

    def metrics(self, cfg: Config) -> dict[str, Any]:
        metrics: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        cost = llm.cost(self.prompt_tokens, self.completion_tokens, cfg.teacher)
        if cost is not None:
            metrics["cost_usd"] = round(cost, 4)
        return metrics


def check_failure_rate(stage: str, totals: LLMTotals, attempted: int, limit: float) -> None:
    """Fail the stage (its rows are already written, errors included) when too many rows failed."""
    if attempted and totals.failed / attempted > limit:
        raise StageError(
            f"{stage}: {totals.failed} of {attempted} requests failed (max_failure_rate {limit:.0%}); "
            f"rows and errors are written, a rerun retries only the failed ones. First errors:\n  "
            + "\n  ".join(totals.errors[:3])
        )
