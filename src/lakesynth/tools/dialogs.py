"""Dialogs: multi-turn tool dialogs in APIGen-MT's order -> `tool_blueprints`, `tool_dialog_turns`, `tool_dialogs`.

Off by default (`tools.dialogs.enabled`). Two phases, as APIGen-MT (arXiv 2504.03601) makes them:
1. A task blueprint per request (`count`): the teacher writes a user's goal and the ground-truth sequence of calls
   that does it. The blueprint is validated by running it: each call against its tool's JSON Schema, then in the
   sandbox; one that fails is dropped (`format:<rule>`, `execution:<Error>`), and its results are kept.
2. A simulated user with that goal talks with the assistant, as a persona (role and tone) drawn per dialog from the
   tools job's `tools.generation.personas` by a seeded hash (stored on its turns and its verdict). In rounds, the
   next turn of every unfinished dialog is asked at once (core/llm_stage.py): the user's next message (or `done`),
   or the assistant's next step, which is either calls, run in the sandbox at once so the assistant reads their
   results in its next step, or a reply. Each request carries the whole dialog so far; each turn is a row of
   `tool_dialog_turns`, so a crash costs the turns in flight and a rerun continues every dialog from its last stored
   turn. A dialog ends when the user is done or after `max_turns` turns.
A dialog is kept only if its calls reach the blueprint's results: both are run again in the sandbox, and every
result of the blueprint's calls must be among the dialog's (`diverged:<call>` names the first one that is not).
`tool_dialogs` holds every dialog's verdict and its messages; tool_format writes the kept ones.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import B, L, S
from lakesynth.core.templates import render
from lakesynth.errors import StageSkipped
from lakesynth.qa.dialogs import persona as drawn
from lakesynth.tools import decoding, steps
from lakesynth.tools import spec as toolspec

BLUEPRINT = """You plan a task to test an assistant that serves a user by calling functions (tools).

The tools:
{{ tools }}

Write "goal": what the user wants done, in one or two sentences in the user's own words, with every value the calls
need (names, amounts, dates). Then write "function_calls": the calls, in order, that do exactly this goal, {{ least }}
to {{ most }} of them. This is task {{ index }}: make it differ from the others."""

USER = """You play a user who talks with an assistant that can call functions for you. Your goal:
{{ goal }}
{% if persona %}
You are {{ persona.role }}, writing in a {{ persona.tone }} tone.
{% endif %}
The dialog so far:
{{ dialog }}

Write "message": your next message to the assistant, short, as a user writes: ask for what your goal still needs, one
thing at a time, and give the values it asks for. When the assistant has done all of your goal, thank it and write
"done": true; otherwise "done": false."""

ASSISTANT = """You are an assistant that serves the user by calling functions (tools).

The tools:
{{ tools }}

The dialog so far:
{{ dialog }}

Either call the tools the user's last request needs ("function_calls", and "reply" empty), or, when the results you
have answer it or you need a value from the user, write "reply" to the user and call nothing. Use only values the user
gave or the tools returned."""


class DialogsConfig(LLMStageConfig):
    enabled: bool = Field(False, description="Make multi-turn tool dialogs: blueprints, then simulated dialogs.")
    count: int = Field(8, ge=1, description="Task blueprints to ask for (one dialog each).")
    max_calls: int = Field(3, ge=1, le=8, description="Most calls in a blueprint, and in one assistant step.")
    max_turns: int = Field(8, ge=2, description="Most turns (user and assistant steps) in a dialog.")
    blueprint_template: str = Field(BLUEPRINT, description="The blueprint's Jinja prompt (tools, least, most, index).")
    user_template: str = Field(USER, description="The simulated user's Jinja prompt (goal, persona, dialog).")
    template: str = Field(ASSISTANT, description="The assistant's Jinja prompt (tools, dialog).")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=16, description="Completion token limit.")
    seed: int = Field(7, description="Seed of each dialog's persona, drawn from tools.generation.personas.")


class Call(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function_name: str
    arguments: dict[str, Any]


class Blueprint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    goal: str
    function_calls: list[Call]


class UserTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str
    done: bool


class AssistantTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function_calls: list[Call]
    reply: str


BLUEPRINTS = tables.contract(
    "tool_blueprints",
    [("blueprint_id", S), ("goal", S), ("calls", S), ("results", S)] + tables.LLM_ACCOUNTING + tables.VERDICT,
    key="blueprint_id",
    parent="blueprint_id",
)
TURNS = tables.contract(
    "tool_dialog_turns",
    [
        ("turn_id", S),
        ("blueprint_id", S),
        ("turn", L),
        ("role", S),
        ("persona", S),
        ("content", S),
        ("calls", S),
        ("results", S),
        ("done", B),
    ]
    + tables.LLM_ACCOUNTING,
    key="turn_id",
    parent="blueprint_id",
    parent_table="tool_blueprints",
)
TABLE = tables.verdict(
    "tool_dialogs",
    [("blueprint_id", S), ("persona", S), ("turns", L), ("calls", S), ("replayed", S), ("messages", S)],
    judges="tool_blueprints",
    key="blueprint_id",
)


def calls_of(reply: dict | None) -> list[dict]:
    """A reply's calls as `[{"name", "arguments"}]`."""
    return toolspec.normalize_calls({"function_calls": reply["function_calls"]}) if reply else []


def dialog_text(turns: list[dict]) -> str:
    """The dialog so far as the teacher reads it: each turn on its own lines, results under their calls."""
    lines = []
    for t in turns:
        if t["role"] == "user":
            lines.append(f"User: {t['content']}")
        elif t["calls"]:
            for c, r in zip(json.loads(t["calls"]), json.loads(t["results"] or "[]")):
                lines.append(f"Assistant called {c['name']}({json.dumps(c['arguments'], sort_keys=True)})")
                lines.append(f"  returned: {json.dumps(r['result'] if r['ok'] else {'error': r['error']})}")
        else:
            lines.append(f"Assistant: {t['content']}")
    return "\n".join(lines) or "(nothing yet: you speak first)"


def _prompts(batch: pd.DataFrame, *, template: str, tools: str) -> list[list[dict]]:
    fields = [c for c in batch.columns if c in ("goal", "dialog", "index", "least", "most")]
    return [
        [
            {
                "role": "user",
                "content": render(
                    template,
                    tools=tools,
                    persona=json.loads(row["persona"]) if row.get("persona") else None,
                    **{f: row[f] for f in fields},
                ),
            }
        ]
        for _, row in batch.iterrows()
    ]


ASKED_DDL = "turn_id string, blueprint_id string, turn long, role string, persona string, goal string, dialog string"
ASKED = tuple(c.split()[0] for c in ASKED_DDL.split(", "))  # a turn's request columns


def persona(blueprint_id: str, seed: int, personas: list) -> str | None:
    """The user a dialog is written as, drawn from the tools job's personas by a seeded hash of the dialog (the
    conversations' draw): JSON of its role and tone, or None when there are none."""
    who = drawn(blueprint_id, seed, personas)
    return who.model_dump_json() if who else None


def _blueprint_rows(replies: DataFrame) -> DataFrame:
    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            out = [json.loads(o) if isinstance(o, str) else None for o in b["output"]]
            yield b.assign(
                goal=[o["goal"] if o else None for o in out],
                calls=[json.dumps(calls_of(o), ensure_ascii=False, sort_keys=True) if o else None for o in out],
                results=None,
                keep=[None if o else False for o in out],
                drop_reason=[None if o else "blueprint_error" for o in out],
            )[BLUEPRINTS.row_names]

    return replies.mapInPandas(parse, BLUEPRINTS.row_schema)


def _turn_rows(replies: DataFrame) -> DataFrame:
    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            out = [json.loads(o) if isinstance(o, str) else None for o in b["output"]]
            user = b["role"] == "user"
            calls = [None if u or not o else calls_of(o) for u, o in zip(user, out)]
            yield b.assign(
                content=[
                    (o["message"] if u else (None if c else o["reply"])) if o else None
                    for u, o, c in zip(user, out, calls)
                ],
                calls=[json.dumps(c, ensure_ascii=False, sort_keys=True) if c else None for c in calls],
                results=None,
                done=[bool(o["done"]) if u and o else False for u, o in zip(user, out)],
            )[TURNS.row_names]

    return replies.mapInPandas(parse, TURNS.row_schema)


def _step(name: str, table, key: str, columns, output, template: str, rows, settings, **extra) -> LLMStep:
    return LLMStep(
        name=name,
        table=table,
        key=key,
        columns=columns,
        output=output,
        settings=settings,
        template=template,
        prompts=functools.partial(_prompts, template=template, tools=extra.pop("tools")),
        rows=rows,
        **extra,
    )


def run_calls(box, calls: list[dict]) -> list[dict]:
    """The calls run in the sandbox: per call its name, whether it ran, and its result or error."""
    outcomes = box.run([(c["name"], c["arguments"]) for c in calls]) if calls else []
    return [
        {"name": c["name"], "ok": o.ok, "result": json.loads(o.result) if o.ok else None, "error": o.error}
        for c, o in zip(calls, outcomes)
    ]


def validate_blueprints(ctx: RunContext, box, checks: dict) -> int:
    """Each new blueprint's calls against the tools' schemas, then run: kept, or dropped with the first failure."""
    todo = tables.read(ctx.spark, ctx.rt, BLUEPRINTS).where("keep IS NULL AND error IS NULL").collect()
    rows = []
    for r in todo:
        calls = json.loads(r.calls)
        issues = toolspec.call_issues(calls, None, checks) or (
            [] if calls else [{"rule": "no_calls"}]  # a blueprint with nothing to do tests nothing
        )
        results = [] if issues else run_calls(box, calls)
        failed = next((x for x in results if not x["ok"]), None)
        reason = (
            f"format:{issues[0]['rule']}"
            if issues
            else f"execution:{failed['error'].split(':', 1)[0]}"
            if failed
            else None
        )
        row = r.asDict()
        row.update(results=json.dumps(results, ensure_ascii=False), keep=reason is None, drop_reason=reason)
        rows.append({k: row[k] for k in BLUEPRINTS.row_names})
    if rows:
        frame = ctx.spark.createDataFrame(rows, BLUEPRINTS.row_schema)
        tables.upsert(ctx.spark, ctx.rt, BLUEPRINTS, frame, run_id=ctx.cfg.run_id)
    return len(rows)


def execute_turns(ctx: RunContext, box) -> int:
    """The calls of assistant turns not run yet, run, their results stored on the turn."""
    todo = tables.read(ctx.spark, ctx.rt, TURNS).where("calls IS NOT NULL AND results IS NULL").collect()
    rows = []
    for r in todo:
        row = r.asDict()
        row["results"] = json.dumps(run_calls(box, json.loads(r.calls)), ensure_ascii=False)
        rows.append({k: row[k] for k in TURNS.row_names})
    if rows:
        tables.upsert(
            ctx.spark, ctx.rt, TURNS, ctx.spark.createDataFrame(rows, TURNS.row_schema), run_id=ctx.cfg.run_id
        )
    return len(rows)


def next_turn(turns: list[dict], max_turns: int) -> tuple[int, str] | None:
    """The number and role of a dialog's next turn, or None when it has ended (the user done, or max_turns)."""
    if turns and turns[-1]["role"] == "user" and turns[-1]["done"]:
        return None
    if len(turns) >= max_turns:
        return None
    if not turns or (turns[-1]["role"] == "assistant" and not turns[-1]["calls"]):
        return len(turns), "user"
    return len(turns), "assistant"  # after the user, or after results


def stored_turns(ctx: RunContext) -> dict[str, list[dict]]:
    """Each dialog's turns, in order, up to its first failed one (asked again)."""
    by: dict[str, list[dict]] = {}
    failed: set[str] = set()
    for r in tables.read(ctx.spark, ctx.rt, TURNS).orderBy("blueprint_id", "turn").collect():
        turns = by.setdefault(r.blueprint_id, [])
        if r.blueprint_id in failed or len(turns) != r.turn:
            continue
        if r.error is not None:
            failed.add(r.blueprint_id)
        else:
            turns.append(r.asDict())
    return by


def messages(turns: list[dict]) -> list[dict]:
    """A dialog's training messages: user turns, the assistant's calls (ids call_1...) with one `tool` message per
    call holding what the sandbox returned, and its replies; up to its last reply (a final "done" is not taught)."""
    out, n = [], 0
    for t in turns:
        if t["role"] == "user":
            out.append({"role": "user", "content": t["content"]})
        elif t["calls"]:
            calls = json.loads(t["calls"])
            ids = [f"call_{n + i}" for i in range(1, len(calls) + 1)]
            n += len(calls)
            out.append(
                {
                    "role": "assistant",
                    "tool_calls": [{"id": i, "function": c} for i, c in zip(ids, calls)],
                }
            )
            for i, r in zip(ids, json.loads(t["results"])):
                result = r["result"] if r["ok"] else {"error": r["error"]}
                out.append({"role": "tool", "tool_call_id": i, "content": steps.tool_content(result)})
        else:
            out.append({"role": "assistant", "content": t["content"]})
    while out and not (out[-1]["role"] == "assistant" and out[-1].get("content")):
        out.pop()
    return out


def _canonical(result: dict) -> str:
    return json.dumps(result["result"] if result["ok"] else {"error": result["error"]}, sort_keys=True)


def verdict(box, blueprint: list[dict], made: list[dict]) -> tuple[list[dict], str | None]:
    """Both sequences of calls run again; the dialog's replayed results, and the first blueprint call whose result
    the dialog does not reach (None: it reaches them all)."""
    wanted, got = run_calls(box, blueprint), run_calls(box, made)
    reached = [_canonical(r) for r in got]
    for call, result in zip(blueprint, wanted):
        if _canonical(result) not in reached:
            return got, f"diverged:{call['name']}({json.dumps(call['arguments'], sort_keys=True)})"
        reached.remove(_canonical(result))
    return got, None


def judge(ctx: RunContext, box, ended: set[str]) -> DataFrame:
    """Every ended dialog's verdict and messages."""
    blueprints = {
        r.blueprint_id: json.loads(r.calls)
        for r in tables.read(ctx.spark, ctx.rt, BLUEPRINTS).where("keep").select("blueprint_id", "calls").collect()
    }
    rows = []
    for blueprint_id, turns in sorted(stored_turns(ctx).items()):
        if blueprint_id not in blueprints or blueprint_id not in ended:
            continue
        made = [c for t in turns if t["role"] == "assistant" and t["calls"] for c in json.loads(t["calls"])]
        said = messages(turns)
        replayed, reason = verdict(box, blueprints[blueprint_id], made)
        if not said:  # no reply of the assistant to end on
            reason = "unfinished"
        rows.append(
            (
                blueprint_id,
                turns[0]["persona"],
                len(turns),
                json.dumps(made, ensure_ascii=False),
                json.dumps(replayed, ensure_ascii=False),
            )
            + (json.dumps(said, ensure_ascii=False), reason is None, reason)
        )
    return ctx.spark.createDataFrame(rows, TABLE.row_schema)


def run(ctx: RunContext) -> StageResult:
    from lakesynth.tools import sandbox

    cfg, d = ctx.cfg, ctx.cfg.tools.dialogs
    found = ctx.read("tools").select("name", "spec", "parameters", "module").collect()
    module = next((r.module for r in found if r.module), None)
    if not module:
        raise StageSkipped("not run: blueprints and dialogs are checked by running their calls; no implementations")
    params = {r.name: json.loads(r.parameters) for r in found}
    tools = "\n".join(json.dumps(json.loads(r.spec)["function"], ensure_ascii=False, sort_keys=True) for r in found)
    schema = functools.partial(decoding.calls_schema, params)
    requests = ctx.spark.createDataFrame(
        [(f"bp-{i}", i, 1, d.max_calls) for i in range(1, d.count + 1)],
        "blueprint_id string, index int, least int, most int",
    )
    blueprint_schema = {
        "type": "object",
        "properties": {"goal": {"type": "string"}, "function_calls": schema(1, d.max_calls)},
        "required": ["goal", "function_calls"],
        "additionalProperties": False,
    }
    result = llm_stage.run(
        ctx,
        _step(
            "dialog_blueprints",
            BLUEPRINTS,
            "blueprint_id",
            ("blueprint_id", "index", "least", "most"),
            Blueprint,
            d.blueprint_template,
            _blueprint_rows,
            d,
            tools=tools,
            json_schema=blueprint_schema,
        ),
        requests,
    )
    metrics: dict[str, Any] = {"blueprints_asked": result.rows_out}
    assistant_schema = {
        "type": "object",
        "properties": {"function_calls": schema(0, d.max_calls), "reply": {"type": "string"}},
        "required": ["function_calls", "reply"],
        "additionalProperties": False,
    }
    askers = {
        "user": _step(
            "dialog_user", TURNS, "turn_id", ASKED, UserTurn, d.user_template, _turn_rows, d, tools=tools,
        ),
        "assistant": _step(
            "dialog_assistant", TURNS, "turn_id", ASKED, AssistantTurn, d.template, _turn_rows, d, tools=tools,
            json_schema=assistant_schema,
        ),
    }  # fmt: skip
    run_with = cfg.tools.execution  # the execution check's limits
    with sandbox.Sandbox(
        module, workers=run_with.processes, timeout_s=run_with.timeout_s, memory_mb=run_with.memory_mb
    ) as box:
        metrics["blueprints_validated"] = validate_blueprints(ctx, box, toolspec.validators(params))
        goals = {
            r.blueprint_id: r.goal
            for r in tables.read(ctx.spark, ctx.rt, BLUEPRINTS).where("keep").select("blueprint_id", "goal").collect()
        }
        who = {b: persona(b, d.seed, cfg.tools.generation.personas.all()) for b in goals}
        metrics["executed"] = execute_turns(ctx, box)  # calls a crash left unrun
        rounds, stuck = 0, set()
        while True:
            turns = stored_turns(ctx)
            due = {}
            for blueprint_id in goals:
                if blueprint_id in stuck:
                    continue
                upcoming = next_turn(turns.get(blueprint_id, []), d.max_turns)
                if upcoming:
                    due[blueprint_id] = upcoming
            if not due:
                break
            rounds += 1
            for role, step in askers.items():
                rows = [
                    (f"{b}:{n}", b, n, role, who[b], goals[b], dialog_text(turns.get(b, [])))
                    for b, (n, r) in sorted(due.items())
                    if r == role
                ]
                if rows:
                    frame = ctx.spark.createDataFrame(rows, ASKED_DDL)
                    result.add(llm_stage.run(ctx, step, frame))
            execute_turns(ctx, box)
            after = stored_turns(ctx)
            stuck |= {b for b, (n, _) in due.items() if len(after.get(b, [])) <= n}  # failed: asked on a rerun
        ended = {b for b in goals if b not in stuck and next_turn(stored_turns(ctx).get(b, []), d.max_turns) is None}
        verdicts = judge(ctx, box, ended)
    tables.overwrite(ctx.spark, ctx.rt, TABLE, verdicts, run_id=cfg.run_id)  # derived whole from the turns
    counts = tables.verdict_counts(tables.read(ctx.spark, ctx.rt, TABLE))
    written = tables.read(ctx.spark, ctx.rt, TABLE)
    per = written.agg(F.avg("turns").alias("t")).first().t
    total = counts["kept"] + sum(counts["dropped"].values())
    metrics.update(
        rounds=rounds,
        unfinished=len(stuck),
        turns_per_dialog=round(per, 2) if per else None,
        success_rate=round(counts["kept"] / total, 3) if total else None,
        **counts,
    )
    result.metrics.update(metrics)
    result.tables = [BLUEPRINTS, TURNS, TABLE]
    return result


def figure(entry: dict):
    """Kept dialogs beside each drop reason (a divergence counted as one), with the success rate and turns."""
    import matplotlib.pyplot as plt

    reasons: dict[str, int] = {}
    for reason, n in entry.get("dropped", {}).items():
        name = "diverged" if reason.startswith("diverged:") else reason
        reasons[name] = reasons.get(name, 0) + n
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(reasons) + 2), 3))
    ax.bar(
        ["kept", *reasons], [entry.get("kept", 0), *reasons.values()], color=["tab:green"] + ["tab:red"] * len(reasons)
    )
    ax.set_ylabel("dialogs")
    ax.set_title(f"{entry.get('success_rate') or 0:.0%} kept, {entry.get('turns_per_dialog') or 0} turns per dialog")
    fig.tight_layout()
    return fig


STAGE = Stage(
    name="dialogs",
    help="multi-turn tool dialogs in APIGen-MT's order: blueprints run in the sandbox, then a simulated user and the "
    "assistant, kept when the dialog's calls reach the blueprint's results",
    run=run,
    reads=("tools",),
    writes=(BLUEPRINTS, TURNS, TABLE),
    config=DialogsConfig,
    section="tools.dialogs",
    figures=lambda ctx, entry: {"dialogs/kept.png": figure(entry)} if entry.get("success_rate") is not None else {},
)
