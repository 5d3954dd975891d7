"""Call generation: new function-calling pairs per tool, few-shot from its seeds -> `generated_calls`.

APIGen's generator: for each tool of `tools`, `tools.generation.per_function` requests, shared among the Berkeley
Function Calling Leaderboard's categories as `mix` says (simple, multiple: one call chosen among several tools,
parallel: several calls, parallel_multiple, irrelevance: a query no tool fits, answered by no call). Each request
shows the tools its category offers, up to `examples` of that tool's seed pairs (`tools.seeds`, checked against
the spec when read: a seed that fails is an error naming its line) and, when `personas` are set, a user role and
tone. The reply is decoded against a schema built from the tools' own parameters, one per category (a simple
query gets exactly one call, an irrelevant one none), reduced to what structured-output backends decode; the
format check then applies each tool's full schema. The calls stage puts the generated pairs into `tool_calls`
beside any `--calls` lines, so every check judges them. A request is the same while its tool, category, index and
prompt are: a rerun pays only for what is missing, and raising `per_function` asks only the new ones.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig, Personas
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.sources import Source
from lakesynth.core.stage import RunContext, Stage, StageResult, disabled
from lakesynth.core.tables import S
from lakesynth.core.templates import render
from lakesynth.errors import SeedError
from lakesynth.tools import decoding
from lakesynth.tools import spec as toolspec


class CallGenerationConfig(LLMStageConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "call_generation.j2"
    enabled: bool = Field(True, description="Generate pairs from tools.seeds (skipped when no seeds are given).")
    per_function: int = Field(6, ge=1, le=1000, description="Pairs requested per tool, shared among the mix.")
    mix: dict[str, float] = Field(
        {"simple": 0.4, "multiple": 0.2, "parallel": 0.2, "irrelevance": 0.2},
        description="BFCL category -> share of each tool's requests (simple, multiple, parallel, "
        "parallel_multiple, irrelevance).",
    )
    examples: int = Field(3, ge=0, le=20, description="Seed pairs of the tool shown per request (few-shot).")
    distractors: int = Field(3, ge=1, le=20, description="multiple: other tools offered beside the right one.")
    personas: Personas = Field(default_factory=Personas, description="Users the requests write as (none: no persona).")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=16, description="Completion token limit.")

    @field_validator("mix")
    @classmethod
    def _known(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(toolspec.CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(toolspec.CATEGORIES)}")
        if any(v < 0 for v in mix.values()) or not sum(mix.values()):
            raise ValueError("shares must be >= 0 and not all 0")
        return mix


class GeneratedCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    function_name: str
    arguments: dict[str, Any]


class GeneratedPair(BaseModel):
    """The teacher's reply, validated loosely here: the format check holds it to each tool's full schema."""

    model_config = ConfigDict(extra="forbid")
    query: str
    function_calls: list[GeneratedCall]


TABLE = tables.contract(
    "generated_calls",
    [("request_id", S), ("function", S), ("category", S), ("persona", S), ("query", S), ("calls", S)]
    + tables.LLM_ACCOUNTING,
    key="request_id",
    parent="request_id",
)


def reply_schema(tools: dict[str, dict], category: str) -> dict:
    """The schema a reply of `category` is decoded against: a query, and calls each to one of `tools` with that
    tool's parameters, as many as the category allows."""
    least, most = toolspec.CATEGORIES[category]
    return {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "function_calls": decoding.calls_schema(tools, least, 4 if most is None else most),
        },
        "required": ["query", "function_calls"],
        "additionalProperties": False,
    }


def shares(total: int, mix: dict[str, float]) -> dict[str, int]:
    """`total` requests among the categories in proportion to `mix`, largest remainders first (sums to total)."""
    weight = sum(mix.values())
    exact = {c: total * w / weight for c, w in mix.items()}
    counts = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (counts[c] - exact[c], c))[: total - sum(counts.values())]:
        counts[c] += 1
    return {c: n for c, n in counts.items() if n}


def read_seeds(path: str, checks: dict) -> dict[str, list[str]]:
    """Tool name -> its seed pairs as few-shot lines; the irrelevance seeds (no call) under "". Every seed must
    pass the format check: a seed that fails is an error naming its line and the rule."""
    bad, by_tool = [], {}
    for row in toolspec.read_pairs(path):
        calls = json.loads(row["calls"]) if row["calls"] else None
        found = toolspec.call_issues(calls, row["problem"], checks, row["category"])
        if found:
            bad.append(f"{row['source']} ({row['source_id']}): {found[0]['rule']}: {found[0]['message']}")
            continue
        shown = json.dumps(
            {
                "query": row["query"],
                "function_calls": [{"function_name": c["name"], "arguments": c["arguments"]} for c in calls],
            },
            ensure_ascii=False,
        )
        for name in {c["name"] for c in calls} or {""}:
            by_tool.setdefault(name, []).append(shown)
    if bad:
        raise SeedError(f"{path}: {len(bad)} seed(s) fail the tools' schemas:\n  " + "\n  ".join(bad[:10]))
    return by_tool


def plan(tools: dict[str, dict], seeds: dict[str, list[str]], g: CallGenerationConfig) -> list[dict]:
    """Every request: per tool and category, its index, the tools it offers, its few-shot seeds and persona."""
    names, personas, rows = sorted(tools), g.personas.all(), []
    for position, name in enumerate(names):
        others = [n for n in names if n != name]
        for category, count in sorted(shares(g.per_function, g.mix).items()):
            # Numbered within the tool's category: a larger per_function or another mix keeps every request of
            # a category that does not shrink, and adds only the new ones.
            for index in range(1, count + 1):
                offered = [name]
                if category == "multiple":
                    start = index % max(1, len(others))
                    offered += (others[start:] + others[:start])[: g.distractors]
                elif category in ("irrelevance", "parallel_multiple"):
                    offered = names
                own = seeds.get("" if category == "irrelevance" else name, [])
                shown = [own[(index + k) % len(own)] for k in range(min(g.examples, len(own)))] if own else []
                persona = personas[(position + index) % len(personas)] if personas else None
                request = f"{name}|{category}|{index}"
                rows.append(
                    {
                        "request_id": hashlib.sha256(request.encode()).hexdigest()[:16],
                        "function": name,
                        "category": category,
                        "index": index,
                        "offered": json.dumps([tools[n] for n in sorted(offered)], ensure_ascii=False),
                        "examples": json.dumps(shown, ensure_ascii=False),
                        "persona": persona.model_dump_json() if persona else None,
                    }
                )
    return rows


def prompts(batch: pd.DataFrame, *, template: str) -> list[list[dict]]:
    """Rows -> requests: one new pair each."""
    out = []
    for row in batch.itertuples():
        tools = "\n".join(json.dumps(t, ensure_ascii=False, sort_keys=True) for t in json.loads(row.offered))
        persona = json.loads(row.persona) if row.persona else None
        content = render(
            template,
            tools=tools,
            function=row.function,
            category=row.category,
            index=row.index,
            examples=json.loads(row.examples),
            persona=persona,
        )
        out.append([{"role": "user", "content": content}])
    return out


def _parse(batches: Iterator[pd.DataFrame], *, columns: list[str]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        replies = [json.loads(o) if isinstance(o, str) else None for o in batch["output"]]
        yield batch.assign(
            query=[r["query"] if r else None for r in replies],
            calls=[
                json.dumps(toolspec.normalize_calls(r), ensure_ascii=False, sort_keys=True) if r else None
                for r in replies
            ],
        )[columns]


def to_rows(replies: DataFrame) -> DataFrame:
    """Replies -> rows: the query and its calls as `[{"name", "arguments"}]` (null where the request failed)."""
    columns = TABLE.row_names
    schema = TABLE.row_schema
    return replies.mapInPandas(functools.partial(_parse, columns=columns), schema)


def run(ctx: RunContext) -> StageResult:
    cfg, g = ctx.cfg, ctx.cfg.tools.generation
    specs = {r.name: json.loads(r.spec)["function"] for r in ctx.read("tools").collect()}
    params = {name: spec["parameters"] for name, spec in specs.items()}
    seeds = read_seeds(cfg.tools.seeds, toolspec.validators(params))
    planned = plan(specs, seeds, g)
    schema = (
        "request_id string, function string, category string, index int, offered string, examples string, "
        "persona string"
    )
    source = ctx.spark.createDataFrame(pd.DataFrame(planned), schema)
    # The table holds the plan's requests only: a tool removed or a smaller per_function leaves no stale pair.
    tables.delete_absent(ctx.spark, ctx.rt, TABLE, "request_id", source.select("request_id"))
    result = StageResult(tables=[TABLE])
    for category in sorted({r["category"] for r in planned}):
        step = LLMStep(
            name="call_generation",
            table=TABLE,
            key="request_id",
            columns=("request_id", "function", "category", "index", "offered", "examples", "persona"),
            output=GeneratedPair,
            settings=g,
            template=g.template,
            prompts=functools.partial(prompts, template=g.template),
            rows=to_rows,
            json_schema=reply_schema(params, category),
        )
        result.add(llm_stage.run(ctx, step, source.where(F.col("category") == category)))
    result.metrics["requests_per_category"] = dict(sorted(collections.Counter(r["category"] for r in planned).items()))
    result.metrics["tools_without_seeds"] = sorted(n for n in specs if not seeds.get(n))
    return result


STAGE = Stage(
    name="call_generation",
    help="generate new function-calling pairs per tool, few-shot from its seeds (--seeds), into generated_calls",
    run=run,
    reads=("tools",),
    writes=(TABLE,),
    config=CallGenerationConfig,
    section="tools.generation",
    sources=(
        Source(
            "seeds",
            ("tools.seeds",),
            ("tools.calls",),
            "in the function-calling job, a JSONL of seed query/function_calls pairs to generate from",
        ),
    ),
    # verifying --calls alone is a complete job: the stages after this one go on
    off=lambda cfg: (
        disabled(cfg, "tools.generation")
        if cfg.tools.seeds
        else "no seeds to generate from (--seeds FILE.jsonl, tools.seeds)"
    ),
)
