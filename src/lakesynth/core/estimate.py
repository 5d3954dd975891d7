"""The estimate of a full run from a preview's measurements: requests and tokens per stage, the estimated cost at
the endpoints' prices, wall time at their concurrency and rate limits, and the kept examples expected, with a range.

A preview (pipeline.preview) runs the job on n of its units (seeds, leaves or tools) and measures, per LLM stage,
requests, tokens and latency (budget.Usage). Each figure scales with the units: a full run of U units sends
requests_per_unit x U requests of the same mean size. The kept examples scale the same way, and their range is a
Wilson interval (90%) on the share of the preview's examples that were kept. Saved as JSON in the job's volume
(`_estimate/<job>.json`), beside its tables but not one of them: `lakesynth estimate` prints it, `run` prints it at
its start, and the budget predicts a request's cost from it before the run has measured its own.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

from lakesynth.config import Config
from lakesynth.core.runtime import Runtime
from lakesynth.errors import ConfigError

Z90 = 1.645


def path(rt: Runtime, job: str) -> Path:
    return Path(rt.files_dir("_estimate")) / f"{job}.json"


def wilson(kept: int, total: int, z: float = Z90) -> tuple[float, float]:
    """The Wilson score interval of a share kept/total."""
    if total <= 0:
        return 0.0, 1.0
    p = kept / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def wall_seconds(cfg: Config, endpoint: str, requests: float, tokens: float, latency_s: float) -> float:
    """Seconds for `requests` of mean latency `latency_s` at the endpoint's concurrency and rate limits."""
    settings = cfg.endpoint(endpoint) if endpoint in cfg.endpoints else cfg.endpoint("teacher")
    concurrency = settings.max_concurrency
    if settings.embedded:  # the embedded teacher answers as many at once as it has slots
        concurrency = min(concurrency, settings.embedded_slots)
    bounds = [requests * latency_s / max(concurrency, 1)]
    if settings.requests_per_minute:
        bounds.append(requests / settings.requests_per_minute * 60)
    if settings.tokens_per_minute:
        bounds.append(tokens / settings.tokens_per_minute * 60)
    return max(bounds)


def build(
    cfg: Config, *, job: str, summary: dict[str, Any], n: int, units: int, unit: str, examples: int
) -> dict[str, Any]:
    """The estimate of a run of `units` from a preview `summary` of `n` of them that made `examples` examples
    (each kept or dropped)."""
    scale = units / max(n, 1)
    stages: dict[str, dict[str, Any]] = {}
    for name, used in (summary.get("usage") or {}).items():
        requests = used["requests"]
        if not requests:
            continue
        settings = cfg.endpoint(used["endpoint"]) if used["endpoint"] in cfg.endpoints else cfg.endpoint("teacher")
        per = {
            "prompt_tokens_per_request": used["prompt_tokens"] / requests,
            "completion_tokens_per_request": used["completion_tokens"] / requests,
            "latency_s_per_request": used["latency_ms"] / requests / 1000,
        }
        full = requests * scale
        prompt, completion = per["prompt_tokens_per_request"] * full, per["completion_tokens_per_request"] * full
        cost = settings.cost(prompt, completion)
        stages[name] = {
            "endpoint": used["endpoint"],
            "model": used["model"],
            "requests_per_unit": requests / max(n, 1),
            **per,
            "requests": round(full),
            "prompt_tokens": round(prompt),
            "completion_tokens": round(completion),
            "estimated_cost_usd": None if cost is None else round(cost, 4),
            "wall_s": round(
                wall_seconds(cfg, used["endpoint"], full, prompt + completion, per["latency_s_per_request"]), 1
            ),
        }
    checks = {
        name: {"in": entry["kept"] + sum(entry["dropped"].values()), "kept": entry["kept"], "dropped": entry["dropped"]}
        for name, entry in summary.get("stages", {}).items()
        if isinstance(entry.get("dropped"), dict) and "kept" in entry
    }
    for entry in checks.values():
        entry["yield"] = round(entry["kept"] / entry["in"], 4) if entry["in"] else None
    kept = sum(e.get("rows_out", 0) for e in summary.get("stages", {}).values() if _makes_examples(e))
    low, high = wilson(kept, examples)
    per_example = examples / max(n, 1) * units
    costs = [s["estimated_cost_usd"] for s in stages.values()]
    return {
        "job": job,
        "made": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "unit": unit,
        "preview_units": n,
        "units": units,
        "stages": stages,
        "checks": checks,
        "kept": {
            "preview": kept,
            "preview_examples": examples,
            "expected": round(kept * scale),
            "low": math.floor(low * per_example) if examples else 0,
            "high": math.ceil(high * per_example) if examples else 0,
        },
        "total": {
            "requests": sum(s["requests"] for s in stages.values()),
            "tokens": sum(s["prompt_tokens"] + s["completion_tokens"] for s in stages.values()),
            "estimated_cost_usd": None if not costs or None in costs else round(sum(costs), 4),
            "wall_s": round(sum(s["wall_s"] for s in stages.values()), 1),
        },
    }


def _makes_examples(entry: dict[str, Any]) -> bool:
    """A stage that writes training examples: its summary counts them per split (`train_examples`, ...)."""
    return any(k.endswith("_examples") and isinstance(v, int) for k, v in entry.items())


def save(rt: Runtime, estimate: dict[str, Any]) -> Path:
    target = path(rt, estimate["job"])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.partial")  # never a half-written estimate
    partial.write_text(json.dumps(estimate, indent=2) + "\n", encoding="utf-8")
    partial.replace(target)
    return target


def load(rt: Runtime, job: str) -> dict[str, Any] | None:
    """The saved estimate of `job`, or None."""
    file = path(rt, job)
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: cannot read the saved estimate ({exc}); run `lakesynth preview` again") from exc


def per_stage(rt: Runtime) -> dict[str, dict[str, Any]]:
    """Every saved estimate's stages, by stage (stage names are unique across jobs)."""
    folder = Path(rt.files_dir("_estimate"))
    found: dict[str, dict[str, Any]] = {}
    if "://" in str(folder) or not folder.is_dir():
        return found
    for file in sorted(folder.glob("*.json")):
        saved = load(rt, file.stem) or {}
        found.update(saved.get("stages", {}))
    return found


def _money(value: float | None) -> str:
    return "no prices set" if value is None else f"${value:,.4f}"


def _duration(seconds: float) -> str:
    return (
        f"{seconds / 3600:.1f} h"
        if seconds >= 3600
        else f"{seconds / 60:.1f} min"
        if seconds >= 60
        else f"{seconds:.0f} s"
    )


def render(estimate: dict[str, Any]) -> str:
    """The estimate as lines of text."""
    e, k, t = estimate, estimate["kept"], estimate["total"]
    lines = [
        f"estimate for job {e['job']}: {e['units']} {e['unit']}, from a preview of {e['preview_units']} ({e['made']})",
        f"  {'stage':<18} {'requests':>9} {'prompt tok':>11} {'compl. tok':>11} {'estimated cost':>15} {'wall':>9}",
    ]
    for name, s in e["stages"].items():
        lines.append(
            f"  {name:<18} {s['requests']:>9,} {s['prompt_tokens']:>11,} {s['completion_tokens']:>11,} "
            f"{_money(s['estimated_cost_usd']):>15} {_duration(s['wall_s']):>9}"
        )
    lines.append(
        f"  {'total':<18} {t['requests']:>9,} {t['tokens']:>23,} {_money(t['estimated_cost_usd']):>15} "
        f"{_duration(t['wall_s']):>9}"
    )
    for name, c in e["checks"].items():
        why = ", ".join(f"{r} {n}" for r, n in c["dropped"].items())
        share = "-" if c["yield"] is None else f"{c['yield']:.0%}"
        lines.append(f"  yield {name}: {c['kept']}/{c['in']} kept ({share}){'; dropped ' + why if why else ''}")
    lines.append(
        f"  kept examples expected: {k['expected']:,} (90% range {k['low']:,}-{k['high']:,}; the preview kept "
        f"{k['preview']} of {k['preview_examples']})"
    )
    lines.append("  costs are estimated at the endpoints' price_per_million_* keys; wall time at their concurrency")
    return "\n".join(lines)
