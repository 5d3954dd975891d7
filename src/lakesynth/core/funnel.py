"""The yield funnel of a run, from its tables: every generated row either kept (and in which split) or dropped at
the first step that dropped it, with that step's reason; per run and per topic, leaf, tool and category; with the
tokens (and cost, where the endpoints have prices) per 1,000 kept examples, and a warning for each check, topic,
leaf, tool or category that ends with none kept.

It names no stage: the registry's table contracts say it all. A *generated* table is one a check judges (a verdict
table's `verdict_of`) whose parent is not itself generated (`synthetic_questions`, `leaf_pairs`, `tool_calls`).
Its rows go through, in the stages' data-flow order: the verdict tables that judge it or what it is made into (a
row dropped where `keep` is not true, for its `drop_reason`), the tables it is made into (same key, its parent:
`synthetic_responses`; a row with an `error`, or none, is dropped there), and the training tables (a `split`
column, parent one of those tables): a kept row that reaches none was rejected by the stage writing them.

Only the steps whose stage ran count (`ran`: the stages the run_log has for the run, where given): a row that
passed them all but has a step ahead that has not run yet is *pending*, neither kept nor dropped, and warns of
nothing. A run computes its funnel only where it ran the end of a chain (`ends`), so a partial run (`--stages
seed,questions`, or a Databricks task before the last) neither prints nor records a funnel of rows still on their
way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.core.stage import RunContext, Stage
from lakesynth.core.tables import Table

log = logging.getLogger(__name__)
GROUPS = ("topic", "leaf", "function", "category")  # what a funnel is broken down by, where a table has it
NONE = "(none)"  # the split of a kept row of a chain that ends in no training table
PENDING = "(pending)"  # the split of a row that passed every step that ran, before its training table is written


@dataclass(frozen=True)
class Step:
    stage: str  # the stage that writes `table`: the funnel step's name
    table: Table
    kind: str  # "check" (a verdict table), "made" (the rows made into the next table), "training" (with a split)


@dataclass(frozen=True)
class Chain:
    root: Table  # the generated rows
    stage: str  # the stage that generates them
    steps: tuple[Step, ...]  # in data-flow order, training tables last


def plan(stages: Mapping[str, Stage], names: Collection[str] | None = None) -> list[Chain]:
    """The chains of generated rows, from every registered table contract; with `names`, those whose generating
    stage is one of `names` (the job's stages). A chain's steps are its tables' whatever stage wrote them."""
    order = list(stages)
    writer = {t.name: s.name for s in stages.values() for t in s.writes}
    owned = {t.name: t for s in stages.values() for t in s.writes}
    judged = {t.verdict_of for t in owned.values() if t.verdict_of}
    made = _generated_tables(owned, judged)
    chains = []
    for root in (owned[n] for n in sorted(judged) if n in owned and not owned[n].verdict_of):
        if root.parent_table in judged or (names is not None and writer[root.name] not in names):
            continue  # made from generated rows (a step of their chain), or another job's
        members = {root.name}
        for t in sorted(owned.values(), key=lambda t: order.index(writer[t.name])):
            same_rows = t.parent_table in members and t.parent == t.key == root.key
            if not t.verdict_of and same_rows and "split" not in t.names:
                members.add(t.name)
        steps = [
            Step(writer[t.name], t, "check" if t.verdict_of else "made")
            for t in owned.values()
            if (t.verdict_of in members) or (t.name in members and t.name != root.name)
        ]
        steps.sort(key=lambda s: order.index(s.stage))
        # Where the rows end: every training table fed by a chain table (a taxonomy's pairs share the Q&A's).
        training = [
            Step(writer[t.name], t, "training")
            for t in owned.values()
            if "split" in t.names and not t.verdict_of and t.parent_table in made
        ]
        chains.append(Chain(root, writer[root.name], tuple(steps + training)))
    return chains


def ends(stages: Mapping[str, Stage], names: Collection[str] | None, ran: Collection[str]) -> bool:
    """Whether a stage that `ran` writes where a chain of the job's ends (a training table, with a `split`): only
    then are its rows through every step, and the funnel worth computing, printing and recording (each task of a
    Databricks job is a process of its own: the one that ends the chain does it)."""
    ending = {s.stage for c in plan(stages, names) for s in c.steps if s.kind == "training"}
    return any(name in ending for name in ran)


def _generated_tables(owned: Mapping[str, Table], judged: set[str]) -> set[str]:
    """The generated tables and those made from them: what a training table's parent may be."""
    found = {n for n in judged if n in owned and not owned[n].verdict_of}
    grown = True
    while grown:
        more = {n for n, t in owned.items() if not t.verdict_of and t.parent_table in found and "split" not in t.names}
        grown = bool(more - found)
        found |= more
    return found


def outcomes(ctx: RunContext, chains: list[Chain], ran: Collection[str] | None = None) -> DataFrame | None:
    """One row per generated row: `root` (its table), `item` (its key), GROUPS, `step` (the stage that dropped it,
    null if kept), `drop_reason` and `split` (of a kept one; PENDING for one with a step still to run). Only the
    steps of the stages that `ran` (None: every one with rows) count. None when no generated table exists yet."""
    spark, rt = ctx.spark, ctx.rt
    steps_of = [s for c in chains for s in c.steps if ran is None or s.stage in ran]
    exists = {n for n in (*(c.root.name for c in chains), *(s.table.name for s in steps_of)) if _has_rows(ctx, n)}
    parts = []
    for chain in chains:
        if chain.root.name not in exists:
            continue
        rows = spark.table(rt.fqn(chain.root.name))
        failed = "error" in rows.columns  # a request that made no row records its error on one (a seed's)
        reasons = [F.when(F.col("error").isNotNull(), F.lit(f"{chain.stage}_error")).alias("_r0")] if failed else []
        groups = [F.col(g).alias(f"_{g}_0") for g in GROUPS if g in rows.columns]
        items = rows.select(F.col(chain.root.key).alias("item"), *groups, *reasons)
        steps, columns = ([chain.stage], ["_r0"]) if failed else ([], [])
        counted = [s for s in chain.steps if s in steps_of and s.table.name in exists]
        training = [s for s in counted if s.kind == "training"]
        pending = not training and any(s.kind == "training" for s in chain.steps)  # not where they end, yet
        for i, step in enumerate((s for s in counted if s.kind != "training"), 1):
            t = spark.table(rt.fqn(step.table.name))
            own = [F.col(g).alias(f"_{g}_{i}") for g in GROUPS if g in t.columns]
            if step.kind == "check":
                why = F.when(~F.coalesce(F.col("keep"), F.lit(False)), F.coalesce("drop_reason", F.lit(step.stage)))
                part = t.select(F.col(step.table.key).alias("item"), why.alias(f"_r{i}"), *own)
                items = items.join(part, "item", "left")
            else:  # made into this table: a row without an error, or dropped there
                part = t.select(
                    F.col(step.table.key).alias("item"), F.col("error").alias("_e"), F.lit(True).alias("_m"), *own
                )
                items = items.join(part, "item", "left")
                missing = F.when(F.col("_m").isNull(), F.lit(f"{step.stage}_missing"))
                items = items.withColumn(
                    f"_r{i}", F.coalesce(F.when(F.col("_e").isNotNull(), F.lit(f"{step.stage}_error")), missing)
                )
                items = items.drop("_e", "_m")
            steps.append(step.stage)
            columns.append(f"_r{i}")
        if training:
            ends = None
            for step in training:
                t = spark.table(rt.fqn(step.table.name)).select(F.col(step.table.parent).alias("item"), "split")
                ends = t if ends is None else ends.unionByName(t)
            ends = ends.groupBy("item").agg(F.min("split").alias("split"))
            items = items.join(ends, "item", "left")
            items = items.withColumn("_rt", F.when(F.col("split").isNull(), F.lit(f"{training[0].stage}:rejected")))
            steps.append(training[0].stage)
            columns.append("_rt")
        else:
            items = items.withColumn("split", F.lit(None).cast("string"))
        reason = F.coalesce(*columns, F.lit(None).cast("string")) if columns else F.lit(None).cast("string")
        step = F.coalesce(
            *[F.when(F.col(c).isNotNull(), F.lit(s)) for c, s in zip(columns, steps)], F.lit(None).cast("string")
        )
        groups = []
        for g in GROUPS:
            found = [c for c in items.columns if c.startswith(f"_{g}_")]
            groups.append((F.coalesce(*found) if found else F.lit(None)).cast("string").alias(g))
        parts.append(
            items.select(
                F.lit(chain.root.name).alias("root"),
                "item",
                *groups,
                step.alias("step"),
                reason.alias("drop_reason"),
                F.when(reason.isNull(), F.coalesce("split", F.lit(PENDING if pending else NONE))).alias("split"),
            )
        )
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _has_rows(ctx: RunContext, name: str) -> bool:
    """A table with rows: a check that is off leaves none (a read may have created its table empty)."""
    return _exists(ctx, name) and bool(ctx.spark.table(ctx.rt.fqn(name)).limit(1).collect())


def _exists(ctx: RunContext, name: str) -> bool:
    return ctx.spark.catalog.tableExists(ctx.rt.fqn(name))


def funnel(cells: list[dict], steps: list[str]) -> dict[str, Any]:
    """A funnel from outcome counts (`cells`: step, drop_reason, split, count): generated, then per step what came
    in, what it dropped (per reason) and what it kept, then the rows still pending (PENDING), kept and its splits.
    Every row in exactly one cell."""
    generated = sum(c["count"] for c in cells)
    rows, left = [], generated
    for name in steps:
        reasons: dict[str, int] = {}
        for c in cells:
            if c["step"] == name:
                reasons[c["drop_reason"]] = reasons.get(c["drop_reason"], 0) + c["count"]
        dropped = sum(reasons.values())
        rows.append(
            {
                "step": name,
                "in": left,
                "dropped": dropped,
                "kept": left - dropped,
                "reasons": dict(sorted(reasons.items())),
            }
        )
        left -= dropped
    splits: dict[str, int] = {}
    for c in cells:
        if c["step"] is None:
            splits[c["split"]] = splits.get(c["split"], 0) + c["count"]
    pending = splits.pop(PENDING, 0)
    out = {"generated": generated, "steps": rows, "kept": left - pending, "splits": dict(sorted(splits.items()))}
    return {**out, "pending": pending} if pending else out


def summary(
    ctx: RunContext,
    stages: Mapping[str, Stage],
    names: Collection[str] | None = None,
    ran: Collection[str] | None = None,
) -> dict[str, Any]:
    """The run's funnel (`funnel`), per topic, leaf, tool (`function`) and category (`by`), the tokens and cost
    per 1,000 kept (`spend`) and what ended with none kept (`warnings`); {} when nothing was generated yet. Only
    the steps of the stages that `ran` (None: every one with rows) count; the rows they passed are pending."""
    chains = plan(stages, names)
    found = outcomes(ctx, chains, ran)
    if found is None:
        return {}
    cells = [r.asDict() for r in found.groupBy("root", *GROUPS, "step", "drop_reason", "split").count().collect()]
    order = list(stages)
    steps = sorted({s for c in chains for s in [c.stage, *(x.stage for x in c.steps)]}, key=order.index)
    seen = {c["step"] for c in cells} | {
        x.stage for c in chains for x in c.steps if (ran is None or x.stage in ran) and _has_rows(ctx, x.table.name)
    }
    steps = [s for s in steps if s in seen]
    out = funnel(cells, steps)
    by: dict[str, dict[str, dict]] = {}
    for g in GROUPS:
        values = sorted({c[g] for c in cells if c[g] is not None} | expected(ctx, stages, names, chains, g))
        if values:
            by[g] = {v: _brief(funnel([c for c in cells if c[g] == v], steps)) for v in values}
    out["by"] = by
    out["spend"] = spend(ctx, stages, names, chains, out["kept"])
    out["warnings"] = warnings(out)
    return out


def of_run(ctx: RunContext, stages: Mapping[str, Stage]) -> dict[str, Any]:
    """The funnel of the job that run `ctx.cfg.run_id` ran (the stages its run_log rows name), else of every
    generated table there (an export or report run on its own)."""
    ran = stages_run(ctx)
    return summary(ctx, stages, ran, ran) or summary(ctx, stages)


def guarded(compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """`compute()`'s funnel, or {} and why not: describing the data (a run's output, a dataset card) never fails
    the run or the export."""
    try:
        return compute(), ""
    except Exception as exc:  # any failure: the funnel is a description, never the work itself
        log.debug("funnel failed", exc_info=True)
        return {}, f"no yield funnel: {type(exc).__name__}: {exc}"


def stages_run(ctx: RunContext) -> set[str]:
    """The stages that run `ctx.cfg.run_id` ran to the end (the run_log's `ok` rows: every process of the job's)."""
    log = ctx.read("run_log", kept=False).where((F.col("run_id") == ctx.cfg.run_id) & (F.col("status") == "ok"))
    return {r.stage for r in log.select("stage").distinct().collect()}


def _brief(f: dict) -> dict:
    """A group's funnel in short: generated, kept, the splits, and the drops per step that dropped any."""
    dropped = {s["step"]: s["dropped"] for s in f["steps"] if s["dropped"]}
    out = {"generated": f["generated"], "kept": f["kept"], "dropped": dropped, "splits": f["splits"]}
    return {**out, "pending": f["pending"]} if f.get("pending") else out


def expected(ctx: RunContext, stages: Mapping[str, Stage], names, chains: list[Chain], group: str) -> set[str]:
    """Every value of `group` that the inputs of the chains name, so a value that made no row at all still gets its
    line (and its warning): a generated table's parent (the seeds' topics, the taxonomy's leaves) where the chain
    has that column too, and the tables no other table is the parent of (the requested tools and categories)."""
    in_chains = {n for c in chains for n in (c.root.name, *(s.table.name for s in c.steps))}
    parents = {c.root.parent_table: c for c in chains if c.root.parent_table}
    values: set[str] = set()
    for stage in stages.values():
        for t in stage.writes if names is None or stage.name in names else ():
            if group not in t.names or t.name in in_chains or "split" in t.names or t.verdict_of:
                continue
            chain = parents.get(t.name)
            if chain is not None:
                if not any(
                    group in x.names for x in (chain.root, *(s.table for s in chain.steps if s.kind != "training"))
                ):
                    continue
            elif t.parent_table is not None:
                continue
            if _exists(ctx, t.name):
                rows = ctx.spark.table(ctx.rt.fqn(t.name)).where(F.col(group).isNotNull()).select(group).distinct()
                values |= {str(r[0]) for r in rows.collect()}
    return values


def spend(ctx: RunContext, stages: Mapping[str, Stage], names, chains: list[Chain], kept: int) -> dict[str, Any]:
    """Tokens the tables that made the data record (every LLM table of the job up to the training tables, not the
    evaluation's), priced at each stage's endpoint where every one has prices; per 1,000 kept examples."""
    training = {t.name for s in stages.values() for t in s.writes if "split" in t.names}
    prompt = completion = 0
    cost: float | None = 0.0
    for stage in stages.values():
        if names is not None and stage.name not in names:
            continue
        named = getattr(_section(ctx.cfg, stage.config_key), "endpoint", None) if stage.config is not None else None
        endpoint = named if isinstance(named, str) and named in ctx.cfg.endpoints else "teacher"
        for t in stage.writes:
            if (
                "prompt_tokens" not in t.names
                or t.parent_table in training
                or t.name in training
                or not _exists(ctx, t.name)
            ):
                continue
            agg = (
                ctx.spark.table(ctx.rt.fqn(t.name))
                .agg(
                    F.coalesce(F.sum("prompt_tokens"), F.lit(0)).alias("p"),
                    F.coalesce(F.sum("completion_tokens"), F.lit(0)).alias("c"),
                )
                .first()
            )
            prompt, completion = prompt + int(agg.p), completion + int(agg.c)
            priced = ctx.cfg.endpoint(endpoint).cost(int(agg.p), int(agg.c))
            cost = None if cost is None or priced is None else cost + priced
    tokens = prompt + completion
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if kept and tokens:
        out["tokens_per_1000_kept"] = round(tokens * 1000 / kept)
    if cost is not None and tokens:
        out["cost_usd"] = round(cost, 4)
        if kept:
            out["cost_per_1000_kept_usd"] = round(cost * 1000 / kept, 4)
    return out


def _section(cfg, dotted: str):
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def warnings(f: dict) -> list[str]:
    """What ended with no kept example: a step that kept none of its rows, a topic, leaf, tool or category (not
    one with rows pending: they may yet be kept)."""
    found = []
    if f["generated"] and not f["kept"] and not f.get("pending"):
        found.append(f"no example kept: all {f['generated']} generated rows were dropped")
    for s in f["steps"]:
        if s["in"] and not s["kept"]:
            found.append(f"{s['step']} kept none of the {s['in']} rows it saw ({counts(s['reasons'])})")
    for group, values in f.get("by", {}).items():
        for value, g in values.items():
            if not g["kept"] and not g.get("pending"):
                why = f"all {g['generated']} dropped ({counts(g['dropped'])})" if g["generated"] else "none generated"
                found.append(f"{group} '{value}': 0 kept examples, {why}")
    return found


def counts(found: Mapping[str, int]) -> str:
    """Counts by name as the funnel writes them everywhere (line, warnings, tables, figure, card): `a 3, b 1`."""
    return ", ".join(f"{k} {v}" for k, v in found.items())


def line(f: dict) -> str:
    """The funnel on one line, for the run's output: `funnel: 72 generated -> critic 60 -> ... -> 40 kept (...)`."""
    parts = [f"{f['generated']} generated"] + [f"{s['step']} {s['kept']}" for s in f["steps"]]
    splits = counts(f["splits"])
    spend_ = f.get("spend", {})
    per = [f"{spend_['tokens_per_1000_kept']:,} tokens"] if "tokens_per_1000_kept" in spend_ else []
    per += [f"${spend_['cost_per_1000_kept_usd']}"] if "cost_per_1000_kept_usd" in spend_ else []
    cost = f"; {', '.join(per)} per 1,000 kept" if per else ""
    pending = f" -> {f['pending']} pending" if f.get("pending") else ""
    return f"funnel: {' -> '.join(parts)}{pending} -> {f['kept']} kept" + (f" ({splits})" if splits else "") + cost
