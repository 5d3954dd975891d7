"""Screen stage: every answered question and taxonomy pair checked against the whole lakehouse ->
`screen_verdicts`, `leaf_screen_verdicts` and `contamination_report`.

- Repeats of earlier runs (`quality.dedup.across_runs`): a question exactly or nearly the same as an example an
  earlier run kept (the signatures table, signatures.py) is dropped with `dedup:earlier_run`, naming that
  example, its run and its table. Within a run, dedup's rules stand; an example's own signature (a rerun) never
  matches it.
- Benchmark contamination (`decontamination.sets`): a question sharing a word `ngram`-gram with an evaluation item
  (13, as the GPT-3 and Llama reports did), or whose content words are at least `threshold` alike (MinHash, then
  the exact Jaccard), is dropped with `contaminated:<set>`, naming the item. `contamination_report` lists each
  item hit and the examples that hit it.
Format reads only what every verdict table keeps.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from lakesynth.config import Section
from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.quality import screening


class EvaluationSet(Section):
    path: str = Field(
        description="A JSONL or Parquet file of evaluation items, or table:<catalog.schema.table>; the set is named "
        "by the file's stem or the table's name."
    )
    text: str = Field("question", description="The column holding each item's text.")
    id: str = Field("", description="The column holding each item's id (empty: its row number, from 1).")

    @property
    def name(self) -> str:
        return (
            self.path.removeprefix("table:").split(".")[-1] if self.path.startswith("table:") else Path(self.path).stem
        )


class DecontaminationConfig(Section):
    sets: list[EvaluationSet] = Field(
        default_factory=list, description="Evaluation sets no example may repeat (empty: no decontamination)."
    )
    ngram: int = Field(13, ge=3, le=50, description="Words per n-gram; one shared n-gram is a hit.")
    threshold: float = Field(
        0.8, gt=0, le=1, description="Jaccard similarity of content words (MinHash + LSH, verified) that is a hit."
    )

    @field_validator("sets")
    @classmethod
    def _unique(cls, sets: list[EvaluationSet]) -> list[EvaluationSet]:
        names = [s.name for s in sets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"two sets share the name(s) {', '.join(twice)} (a file's stem or a table's name)")
        return sets


def _verdicts(name: str, judges: str, key: str) -> tables.Table:
    return tables.verdict(name, [(key, tables.S), *screening.VERDICT_COLUMNS], judges=judges, key=key)


# A conversation's first user turn is its pair's question (screened here, before conversations are paid for).
SOURCES = (
    screening.Source(
        "synthetic_responses", "question_id", "question", "topic", "training_chat",
        _verdicts("screen_verdicts", "synthetic_responses", "question_id"),
    ),
    screening.Source(
        "leaf_pairs", "pair_id", "question", "leaf", "training_chat",
        _verdicts("leaf_screen_verdicts", "leaf_pairs", "pair_id"),
    ),
)  # fmt: skip
REPORT = screening.REPORT


def run(ctx: RunContext) -> StageResult:
    return screening.screen(ctx, SOURCES, REPORT)


STAGE = Stage(
    name="screen",
    help="check every question and taxonomy pair against earlier runs' examples (quality.dedup.across_runs) and "
    "evaluation sets (decontamination.sets)",
    run=run,
    reads=("synthetic_responses", "leaf_pairs"),
    writes=(*(s.verdicts for s in SOURCES), REPORT),
    config=DecontaminationConfig,
    section="decontamination",
    off=lambda cfg: "",  # always runs: with nothing to check it empties its verdicts, so an old drop never lingers
)
