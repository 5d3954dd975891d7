"""Leaf top-up: every taxonomy leaf reaches `taxonomy.per_leaf` kept pairs, in bounded rounds.

After the grounding check, a leaf with fewer kept pairs (`leaf_pairs` generated without error and not dropped by
`grounding_verdicts`) than `taxonomy.per_leaf` asks the teacher again for what it misses: a round runs the
leaf_generation stage for those leaves only (`ctx.for_topup`: leaf -> pairs missing, asked under the leaf's next
round number, with the generation's spare share) and then the grounding check, at most `taxonomy.max_rounds` rounds.
Each stage pays only for what is new, so a rerun on the same data pays nothing. The summary shows the kept pairs
per leaf before and after (`kept_per_leaf_before`, `kept_per_leaf_after`) and names the leaves that stayed short,
with the drop reasons of their pairs.
"""

from __future__ import annotations

from pyspark.sql import functions as F

from lakesynth.core.stage import RunContext, Stage, StageResult

ROUND = ("leaf_generation", "grounding")  # the stages a leaf's new requests go through


def kept_per_leaf(ctx: RunContext) -> dict[str, int]:
    """Leaf -> its kept pairs (0 for a leaf with none): generated without error and kept by every check."""
    kept = ctx.read("leaf_pairs").where("error IS NULL").groupBy("leaf").count()
    leaves = ctx.read("taxonomy_leaves").select("leaf").join(kept, "leaf", "left")
    return {r.leaf: int(r["count"] or 0) for r in leaves.orderBy("leaf").collect()}


def shortfall(kept: dict[str, int], target: int) -> dict[str, int]:
    return {leaf: target - n for leaf, n in kept.items() if n < target}


def why_short(ctx: RunContext, kept: dict[str, int], missing: dict[str, int]) -> dict[str, str]:
    """Each short leaf's kept count and why its other pairs went, e.g. 'kept 1 of 3: grounding:faithfulness 2'."""
    if not missing:
        return {}
    target, short = ctx.cfg.taxonomy.per_leaf, list(missing)
    reasons: dict[str, dict[str, int]] = {}
    verdicts = ctx.read("grounding_verdicts", kept=False).where(F.col("leaf").isin(short) & ~F.col("keep"))
    for r in verdicts.groupBy("leaf", "drop_reason").count().collect():
        reasons.setdefault(r.leaf, {})[r.drop_reason] = r["count"]
    failed = ctx.read("leaf_pairs", kept=False).where(F.col("leaf").isin(short) & F.col("error").isNotNull())
    for r in failed.groupBy("leaf").count().collect():
        reasons.setdefault(r.leaf, {})["generation_error"] = r["count"]
    return {
        leaf: f"kept {kept[leaf]} of {target}"
        + (": " + ", ".join(f"{k} {v}" for k, v in sorted(reasons[leaf].items())) if leaf in reasons else "")
        for leaf in sorted(missing)
    }


def run(ctx: RunContext) -> StageResult:
    t = ctx.cfg.taxonomy
    if not t.enabled:
        return StageResult(metrics={"disabled": "no taxonomy: pass --taxonomy DIR (taxonomy.path) or a template"})
    if not t.per_leaf:
        return StageResult(metrics={"disabled": "taxonomy.per_leaf is 0"})
    before = kept_per_leaf(ctx)
    kept, rounds, paid = before, 0, 0
    missing = shortfall(kept, t.per_leaf)
    while missing and rounds < t.max_rounds:
        rounds += 1
        print(f"leaf_topup: round {rounds}: {len(missing)} leaf/leaves short of {t.per_leaf}", flush=True)
        paid += ctx.topup_round(ROUND, missing, rounds)["leaf_generation"].rows_out
        kept = kept_per_leaf(ctx)
        missing = shortfall(kept, t.per_leaf)
    return StageResult(
        rows_in=len(before),
        rows_out=paid,
        metrics={
            "rounds": rounds,
            "leaves_short_before": len(shortfall(before, t.per_leaf)),
            "leaves_short": len(missing),
            "kept_per_leaf_before": before,
            "kept_per_leaf_after": kept,
            "short": why_short(ctx, kept, missing),
        },
    )


STAGE = Stage(
    name="leaf_topup",
    help="ask again for the pairs that taxonomy leaves short of taxonomy.per_leaf kept pairs miss, and check them, "
    "in bounded rounds (taxonomy.max_rounds)",
    run=run,
    reads=("taxonomy_leaves", "leaf_pairs", "grounding_verdicts"),
)
