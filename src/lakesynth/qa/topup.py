"""Top-up stage: exactly N kept pairs per seed, when asked.

With `quality.target_per_seed` set, a seed left with fewer kept pairs than that after the quality gate
(`pair_verdicts`) asks the teacher again for the questions it misses, and the new questions go through the same
stages (critic, answers, judge, relevance, dedup), in at most `quality.max_rounds` rounds (core/rounds.py: the
questions stage's `top_up` asks for them). Each stage only pays for what is new, so a rerun on the same data pays
nothing. The summary names the seeds that stayed short, and why: the drop reasons of their pairs.

The diversity gate (`quality.diversity.gate`, off by default) also sends back each topic whose kept questions'
distinct-n is below `min_distinct_n`: each of its seeds asks for `questions.per_seed` more questions (or its
shortfall, if more), with a request for different angles from the questions it has, in each round while the topic
stays below, so at most per_seed x max_rounds more per seed. The summary names those topics with their distinct-n
before and after.
"""

from __future__ import annotations

from pydantic import Field
from pyspark.sql import functions as F

from lakesynth.config import Section
from lakesynth.core import rounds
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.quality import diversity
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


def topic_distinct(ctx: RunContext) -> dict[str, float]:
    """topic -> distinct-n of its kept questions (pair_verdicts), for each topic that has an n-gram."""
    kept = ctx.read("pair_verdicts", kept=False).where("keep")
    rows = kept.select(F.coalesce("topic", F.lit("none")).alias("group"), F.col("question").alias("text"))
    return diversity.per_group(rows, ctx.cfg.quality.diversity.n)


def gated(ctx: RunContext, missing: dict[str, int], sent: dict[str, float]) -> rounds.Missing:
    """`missing` (the seeds short of the target), and with the gate on each seed of a topic too alike, for per_seed
    more with different angles; `sent` gains each such topic with its distinct-n the first time it is sent back."""
    gate = ctx.cfg.quality.diversity.gate
    alike = {t: d for t, d in topic_distinct(ctx).items() if d < gate.min_distinct_n} if gate.enabled else {}
    if not alike:
        return rounds.Missing(missing)
    for topic, before in alike.items():
        sent.setdefault(topic, before)
    seeds = [r.seed_id for r in ctx.read("seed_questions").where(F.col("topic").isin(list(alike))).collect()]
    per_seed = ctx.cfg.questions.per_seed
    return rounds.Missing({**missing, **{s: max(missing.get(s, 0), per_seed) for s in seeds}}, angles=seeds)


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
    """Why there is no top-up: no target and no diversity gate, or the user's own pairs (never added to)."""
    if not cfg.quality.target_per_seed and not cfg.quality.diversity.gate.enabled:
        return "quality.target_per_seed is 0"
    return "seed.pairs: your own pairs are not added to" if cfg.seed.pairs else ""


def run(ctx: RunContext) -> StageResult:
    target, max_rounds = ctx.cfg.quality.target_per_seed, ctx.cfg.quality.max_rounds
    gate, sent = ctx.cfg.quality.diversity.gate.enabled, {}
    short_before = shortfall(ctx, target)
    again = lambda: gated(ctx, shortfall(ctx, target), sent)
    why = [f"short of {target}"] * bool(target) + ["in a topic too alike"] * gate
    why = "seed(s) " + " or ".join(why)
    done = rounds.top_up(ctx, "topup", ROUND, gated(ctx, short_before, sent), again, max_rounds, why)
    short = shortfall(ctx, target) if gate else done.missing  # the gate's seeds are not short of the target
    seeds = ctx.read("seed_questions").count()
    metrics = {}
    if gate:
        after, key = topic_distinct(ctx) if sent else {}, f"distinct_{ctx.cfg.quality.diversity.n}"
        metrics["sent_back"] = {
            t: {f"{key}_before": round(d, 4), f"{key}_after": round(after[t], 4) if t in after else None}
            for t, d in sorted(sent.items())
        }
    return StageResult(
        rows_in=seeds,
        rows_out=done.paid,
        metrics={
            "rounds": done.rounds,
            "seeds_short_before": len(short_before),
            "seeds_short": len(short),
            "short": why_short(ctx, short),
            **metrics,
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
