"""Top-up stage: exactly N kept pairs per seed, when asked.

With `quality.target_per_seed` set, a seed left with fewer kept pairs than that after the quality gate
(`pair_verdicts`) asks the teacher again for the questions it misses, and the new questions go through the same
stages (critic, answers, judge, relevance, dedup), in at most `quality.max_rounds` rounds (core/rounds.py: the
questions stage's `top_up` asks for them). Each stage only pays for what is new, so a rerun on the same data pays
nothing. The summary names the seeds that stayed short, and why: the drop reasons of their pairs.
"""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import rounds
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.quality.diversity import DiversityConfig

ROUND = ("questions", "critic", "responses", "judge", "relevance", "dedup")  # the stages a new question goes through


class TopupConfig(Section):
    target_per_seed: int = Field(0, ge=0, le=50, description="Kept pairs each seed must reach; 0: no top-up.")
    max_rounds: int = Field(2, ge=1, le=10, description="Extra rounds of generation and checks, at most.")
    diversity: DiversityConfig = Field(
        default_factory=DiversityConfig, description="The diversity figures of each run's examples (format stages)."
    )


def shortfall(ctx: RunContext, target: int) -> dict[str, int]:
    """seed_id -> kept pairs still missing, for each seed below `target`."""
    kept = ctx.read("pair_verdicts", kept=False).where("keep").groupBy("seed_id").count()
    seeds = ctx.read("seed_questions").select("seed_id").join(kept, "seed_id", "left")
    missing = seeds.select("seed_id", (F.lit(target) - F.coalesce("count", F.lit(0))).alias("missing"))
    return {r.seed_id: int(r.missing) for r in missing.where("missing > 0").collect()}


def why_short(ctx: RunContext, missing: dict[str, int]) -> dict[str, str]:
    """Each short seed's kept count and the drop reasons of its other pairs, e.g. 'kept 1: judge:quality 2'."""
    if not missing:
        return {}
    verdicts = ctx.read("pair_verdicts", kept=False).where(F.col("seed_id").isin(list(missing)))
    reasons: dict[str, dict[str, int]] = {}
    for r in verdicts.where("NOT keep").groupBy("seed_id", "drop_reason").count().collect():
        reasons.setdefault(r.seed_id, {})[r.drop_reason] = r["count"]
    target = ctx.cfg.quality.target_per_seed
    return {
        seed: f"kept {target - n} of {target}"
        + (": " + ", ".join(f"{k} {v}" for k, v in sorted(reasons[seed].items())) if seed in reasons else "")
        for seed, n in sorted(missing.items())
    }


def off(cfg) -> str:
    """Why there is no top-up: no target, or the user's own pairs (never added to)."""
    if not cfg.quality.target_per_seed:
        return "quality.target_per_seed is 0"
    return "seed.pairs: your own pairs are not added to" if cfg.seed.pairs else ""


def run(ctx: RunContext) -> StageResult:
    target, max_rounds = ctx.cfg.quality.target_per_seed, ctx.cfg.quality.max_rounds
    missing = shortfall(ctx, target)
    again = lambda: shortfall(ctx, target)
    done = rounds.top_up(ctx, "topup", ROUND, missing, again, max_rounds, f"seed(s) short of {target}")
    seeds = ctx.read("seed_questions").count()
    return StageResult(
        rows_in=seeds,
        rows_out=done.paid,
        metrics={
            "rounds": done.rounds,
            "seeds_short_before": len(missing),
            "seeds_short": len(done.missing),
            "short": why_short(ctx, done.missing),
        },
    )


STAGE = Stage(
    name="topup",
    help="ask again for the questions that seeds short of quality.target_per_seed kept pairs miss, and "
    "check them, in bounded rounds",
    run=run,
    reads=("seed_questions", "pair_verdicts"),
    config=TopupConfig,
    section="quality",
    off=off,
)
