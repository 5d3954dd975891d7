"""Leaf top-up: every taxonomy leaf reaches `taxonomy.per_leaf` kept pairs, in bounded rounds.

After the grounding check, a leaf with fewer kept pairs (`leaf_pairs` generated without error and not dropped by
`grounding_verdicts`) than `taxonomy.per_leaf` asks the teacher again for what it misses: a round runs the
leaf_generation stage for those leaves only (its `top_up`: leaf -> pairs missing, asked under the leaf's next
round number, with the generation's spare share) and then the grounding check, at most `taxonomy.max_rounds` rounds
(core/rounds.py).
Each stage pays only for what is new, so a rerun on the same data pays nothing. The summary shows the kept pairs
per leaf before and after (`kept_per_leaf_before`, `kept_per_leaf_after`) and names the leaves that stayed short,
with the drop reasons of their pairs.
"""

from __future__ import annotations

from pyspark.sql import functions as F

from lakesynth.core import rounds
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.taxonomy import switch

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
    before = kept_per_leaf(ctx)
    missing = shortfall(before, t.per_leaf)
    again = lambda: shortfall(kept_per_leaf(ctx), t.per_leaf)
    done = rounds.top_up(ctx, "leaf_topup", ROUND, missing, again, t.max_rounds, f"leaf/leaves short of {t.per_leaf}")
    kept = kept_per_leaf(ctx) if done.rounds else before
    return StageResult(
        rows_in=len(before),
        rows_out=done.paid,
        metrics={
            "rounds": done.rounds,
            "leaves_short_before": len(missing),
            "leaves_short": len(done.missing),
            "kept_per_leaf_before": before,
            "kept_per_leaf_after": kept,
            "short": why_short(ctx, kept, done.missing),
        },
    )


def figure(counts: dict[str, dict[str, int]], target: int = 0):
    """Kept pairs per leaf after the first round and after the top-up rounds, with the per-leaf target."""
    import matplotlib.pyplot as plt

    leaves = sorted(set(counts.get("before", {})) | set(counts.get("after", {})))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(leaves) + 2), 3.5))
    for offset, name, color in ((-0.2, "before", "grey"), (0.2, "after", "tab:blue")):
        heights = [counts.get(name, {}).get(leaf, 0) for leaf in leaves]
        label = "first round" if name == "before" else "after top-up"
        ax.bar([i + offset for i in range(len(leaves))], heights, 0.4, color=color, label=label)
    if target:
        ax.axhline(target, color="tab:red", linestyle="--", linewidth=1, label=f"per_leaf {target}")
    ax.set_xticks(range(len(leaves)), [leaf.rsplit("/", 1)[-1] for leaf in leaves], rotation=20, ha="right")
    ax.set_ylabel("kept pairs")
    ax.set_title("Kept examples per taxonomy leaf")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


STAGE = Stage(
    name="leaf_topup",
    help="ask again for the pairs that taxonomy leaves short of taxonomy.per_leaf kept pairs miss, and check them, "
    "in bounded rounds (taxonomy.max_rounds)",
    run=run,
    reads=("taxonomy_leaves", "leaf_pairs", "grounding_verdicts"),
    off=switch.no_pairs,
    figures=lambda ctx, entry: (
        {
            "taxonomy/kept_per_leaf.png": figure(
                {"before": entry.get("kept_per_leaf_before", {}), "after": entry["kept_per_leaf_after"]},
                ctx.cfg.taxonomy.per_leaf,
            )
        }
        if entry.get("kept_per_leaf_after")
        else {}
    ),
)
