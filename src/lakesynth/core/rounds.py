"""Top-up rounds: ask again for what items (seeds, taxonomy leaves) still miss, and check it, in bounded rounds.

A top-up stage (qa/topup.py, taxonomy/leaf_topup.py) says what is missing (`shortfall`: item -> rows missing) and
which stages a round runs, by name: it never imports them. A round hands the missing counts to each stage of it
that declares a `top_up` (the generation), and runs the others (the checks) as the runner would; each pays only for
what is new. The state of a round is these counts, passed as the stages' input, never kept on the RunContext.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lakesynth.core import registry
from lakesynth.core.stage import RunContext


class Missing(dict):
    """item -> rows missing, and `angles`: the items whose new rows must take other angles than their old ones (the
    diversity gate sent them back), so their requests say so; other items' requests stay as they were."""

    def __init__(self, counts: dict[str, int] | None = None, angles=()) -> None:
        super().__init__(counts or {})
        self.angles = frozenset(angles)


@dataclass
class Rounds:
    rounds: int  # rounds run
    paid: int  # rows the generating stages asked for
    missing: dict[str, int]  # item -> rows still missing after the last round


def top_up(
    ctx: RunContext,
    stage: str,
    names: tuple[str, ...],
    missing: dict[str, int],
    shortfall: Callable[[], dict[str, int]],
    max_rounds: int,
    short_of: str,
) -> Rounds:
    """Run the stages `names` as rounds for what is `missing` (item -> rows), counted again by `shortfall()` after
    each round, at most `max_rounds` times; each round prints its line (`stage: round 1: 3 seed(s) short of 2`,
    `short_of` the rest) and each stage's, as the runner does."""
    stages = registry.default_stages()
    done = Rounds(0, 0, missing)
    while done.missing and done.rounds < max_rounds:
        done.rounds += 1
        print(f"{stage}: round {done.rounds}: {len(done.missing)} {short_of}", flush=True)
        for name in names:
            started = time.monotonic()
            generates = stages[name].top_up is not None
            result = stages[name].execute(ctx, done.missing if generates else None)
            done.paid += result.rows_out if generates else 0
            print("  " + result.line(f"{name} (round {done.rounds})", time.monotonic() - started), flush=True)
        done.missing = shortfall()
    return done
