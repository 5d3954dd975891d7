"""What a run spends on LLM requests, stage by stage, and the cap on it (`budget.max_usd`, `budget.max_tokens`).

The LLM loop (llm_stage.py) asks `admit` before each chunk how many of its pending requests may still go, and
`record`s what the chunk cost once it is merged. A request's cost is predicted from what this stage's requests cost
so far in the run, else from the saved estimate (estimate.py), else from its prompt's length and `max_tokens` (an
upper bound): so a run stops before its measured spend would pass the cap, give or take one chunk's spread around
the prediction. A request held back is its row's error (HELD), so a check drops what it did not judge as it drops a
failed reply, and the row stays pending: a rerun (with a higher cap, or none) sends it, and pays nothing twice. On Databricks' built-in `ai_query`, which reports no tokens per row, a chunk statement's cost is the
prediction itself, and the stage says so (`budget_from`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any

from lakesynth.config import BudgetConfig, EndpointSettings
from lakesynth.core import estimate
from lakesynth.errors import ConfigError

STOPPED = "budget"  # the summary's `stopped` when the cap stopped the run
HELD = "budget: "  # the error of a row whose request the cap held back (pending again on the next run)
FROM_ESTIMATE = "the estimate, per chunk statement (Databricks' ai_query reports no tokens per row)"


@dataclass
class Usage:
    """One stage's requests in this run, as measured."""

    endpoint: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    cost_usd: float | None = None
    not_requested: int = 0  # pending requests the budget held back


@dataclass(frozen=True)
class PerRequest:
    """A request's predicted tokens and cost (None: the endpoint has no prices)."""

    tokens: float
    usd: float | None


class Budget:
    """The run's spend and its cap; one per run (`of`)."""

    def __init__(self, cap: BudgetConfig, estimates: dict[str, dict] | None = None) -> None:
        self.cap = cap
        self.estimates = estimates or {}  # stage -> the saved estimate's entry for it
        self.stages: dict[str, Usage] = {}
        self.stopped = False

    @property
    def capped(self) -> bool:
        return self.cap.capped

    @property
    def tokens(self) -> int:
        return sum(u.prompt_tokens + u.completion_tokens for u in self.stages.values())

    @property
    def usd(self) -> float:
        return sum(u.cost_usd or 0.0 for u in self.stages.values())

    def usage(self, stage: str, teacher: EndpointSettings) -> Usage:
        return self.stages.setdefault(stage, Usage(endpoint=teacher.name, model=teacher.model))

    def per_request(
        self, stage: str, teacher: EndpointSettings, *, prompt_chars: float, max_tokens: int
    ) -> tuple[PerRequest, str]:
        """A request's predicted cost, and what the prediction comes from."""
        used = self.stages.get(stage)
        if used and used.requests and (used.prompt_tokens or used.completion_tokens):
            prompt, completion = used.prompt_tokens / used.requests, used.completion_tokens / used.requests
            source = "this run's requests"
        elif stage in self.estimates:
            saved = self.estimates[stage]
            prompt, completion = saved["prompt_tokens_per_request"], saved["completion_tokens_per_request"]
            source = "the saved estimate"
        else:
            prompt, completion = prompt_chars / 4, float(max_tokens)
            source = "the prompt's length and max_tokens (an upper bound)"
        if self.cap.max_usd is not None and teacher.cost(1, 1) is None:
            raise ConfigError(
                f"budget.max_usd is set, but endpoints.{teacher.name} has no price_per_million_prompt_tokens and "
                f"price_per_million_completion_tokens: set them, or cap with budget.max_tokens"
            )
        return PerRequest(prompt + completion, teacher.cost(prompt, completion)), source  # type: ignore[arg-type]

    def admit(self, pending: int, cost: PerRequest) -> int:
        """How many of `pending` requests may go without the predicted spend passing the cap."""
        if not self.capped or self.stopped:
            return 0 if self.stopped else pending
        room = []
        if self.cap.max_tokens is not None:
            room.append((self.cap.max_tokens - self.tokens) / max(cost.tokens, 1e-9))
        if self.cap.max_usd is not None and cost.usd:
            room.append((self.cap.max_usd - self.usd) / cost.usd)
        allowed = max(0, min(pending, math.floor(min(room)))) if room else pending
        if allowed < pending:
            self.stopped = True
        return allowed

    def record(
        self,
        stage: str,
        teacher: EndpointSettings,
        *,
        requests: int,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: int,
    ) -> None:
        used = self.usage(stage, teacher)
        used.requests += requests
        used.prompt_tokens += prompt_tokens
        used.completion_tokens += completion_tokens
        used.latency_ms += latency_ms
        cost = teacher.cost(prompt_tokens, completion_tokens)
        if cost is not None:
            used.cost_usd = (used.cost_usd or 0.0) + cost

    def summary(self) -> dict[str, Any]:
        """Each stage's measured usage, for the run summary (and the estimate a preview makes from it)."""
        return {stage: asdict(u) for stage, u in self.stages.items()}

    def describe(self) -> str:
        """`budget.max_usd 0.50 (spent 0.49)`, for the line a stopped run ends with."""
        parts = []
        if self.cap.max_usd is not None:
            parts.append(f"budget.max_usd {self.cap.max_usd:g} (estimated spend {self.usd:.4f})")
        if self.cap.max_tokens is not None:
            parts.append(f"budget.max_tokens {self.cap.max_tokens} (spent {self.tokens})")
        return ", ".join(parts)


def of(ctx) -> Budget:
    """The run's budget (one per RunContext, shared by its task contexts), with the saved estimates' per-request
    figures for stages this run has not measured yet."""

    def opened():
        return contextlib.nullcontext(Budget(ctx.cfg.budget, estimate.per_stage(ctx.rt)))

    return ctx.shared("budget", opened)
