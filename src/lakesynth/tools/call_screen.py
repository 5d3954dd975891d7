"""Call screen stage: every tool query checked against the whole lakehouse -> `call_screen_verdicts` and
`call_contamination_report`, as the Q&A job's screen checks questions (quality/screen.py): a repeat of an example
an earlier run kept (`quality.dedup.across_runs`) is dropped with `dedup:earlier_run`, a query that repeats an
evaluation item (`decontamination.sets`) with `contaminated:<set>`. Tool format reads only what it keeps."""

from __future__ import annotations

from lakesynth.core import tables
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.quality import screening

VERDICTS = tables.verdict(
    "call_screen_verdicts", [("call_id", tables.S), *screening.VERDICT_COLUMNS], judges="tool_calls", key="call_id"
)
SOURCES = (
    screening.Source("call_verdicts", "call_id", "query", "function", "training_tools", VERDICTS, answered=False),
)
REPORT = tables.contract("call_contamination_report", list(screening.REPORT.columns[:-2]), key="item_id", parent="set")


def run(ctx: RunContext) -> StageResult:
    return screening.screen(ctx, SOURCES, REPORT)


STAGE = Stage(
    name="call_screen",
    help="check every tool query against earlier runs' examples (quality.dedup.across_runs) and evaluation sets "
    "(decontamination.sets)",
    run=run,
    reads=("call_verdicts",),
    writes=(VERDICTS, REPORT),
    off=lambda cfg: "",  # always runs: with nothing to check it empties its verdicts, so an old drop never lingers
)
