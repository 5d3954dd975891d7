"""Leaf generation: new question and answer pairs for every leaf of the taxonomy -> `leaf_pairs`.

InstructLab's generation walks every leaf, so the data is balanced across the tree. Each leaf gets
`taxonomy.per_leaf` requests plus `taxonomy.generation.spare` of them (a share of per_leaf, rounded up: pairs the
grounding check drops), each asking the teacher for one pair, in one of three modes:
- *freeform* skill: a new question and its answer for the leaf's task description, few-shot from its seed examples;
- *grounded* skill: a NEW context (of the kind the seed examples carry), a question on it and the answer from it;
- *knowledge*: a question the chunk alone answers and its answer from the chunk, one request per chunk of the
  leaf's documents (chunks of the files in its `documents`, in file and position order, taken round-robin until
  the count is reached). The row's `context` is the chunk's text, never generated, and its `chunk_id` is kept.

Each mode has its own structured reply (a grounded reply must carry a context, the others cannot), so each mode is
one run of the shared loop, as call_generation runs one per category. A request is one row, keyed by `pair_id`, a
stable hash of (leaf, round, index): a rerun pays only for what is missing or whose prompt changed, and a larger
per_leaf asks only for the new indices. Round 0 is the plan; a top-up round (its `top_up`: leaf -> kept pairs
still missing, from the leaf_topup stage's rounds) adds requests under the leaf's next round number, and a later
plain run asks again for any of them that failed. Rows of a removed leaf, of a round-0 index past the plan, or of a top-up round
whose chunk is gone are deleted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, S
from lakesynth.core.templates import render
from lakesynth.errors import StageError
from lakesynth.taxonomy import switch

MODES = ("freeform", "grounded", "knowledge")

TEMPLATE = """You write examples to train an assistant\
{% if mode == "knowledge" %} to answer questions from documents{% endif %}.

{% if mode == "knowledge" %}Domain: {{ description }}
What the document covers: {{ outline }}

A passage of the document:
<passage>
{{ context }}
</passage>
{% else %}The task: {{ description }}
{% endif %}{% if examples %}
Examples{% if mode == "knowledge" %} of questions and answers on other passages of the document{% endif %}:
{% for e in examples %}
{% if mode == "grounded" and e.context %}Context:
{{ e.context }}
{% endif %}Question: {{ e.question }}
Answer: {{ e.answer }}
{% endfor %}{% endif %}
{% if mode == "knowledge" %}Write one new question that the passage alone answers, and its answer, using only facts
the passage states. The question must make sense to someone who has not seen the passage: it names what it asks
about and never says "the passage" or "the text". Answer with a JSON object: "question", "answer".
{% elif mode == "grounded" %}Write a NEW context of the same kind as the examples' contexts, with different content,
then one question about it and the answer, drawn only from your context. Answer with a JSON object: "context",
"question", "answer".
{% else %}Write one new question for this task, in the style of the examples, and its answer.
Answer with a JSON object: "question", "answer".
{% endif %}This is example {{ number }}: make it different from the examples above."""


class LeafGenerationConfig(LLMStageConfig):
    template: str = Field(
        TEMPLATE, description="The generation Jinja prompt (mode, description, outline, context, ...)."
    )
    examples: int = Field(3, ge=0, le=20, description="Seed examples of the leaf shown per request (few-shot).")
    spare: float = Field(
        0.5,
        ge=0,
        le=5,
        description="Extra requests per leaf, as a share of the pairs it needs, rounded up (0.5: 5 requests for "
        "per_leaf 3), so pairs the grounding check drops still leave enough.",
    )
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(768, ge=16, description="Completion token limit.")


class Pair(BaseModel):
    """A freeform skill's or a knowledge chunk's pair (a knowledge pair's context is its chunk, not generated)."""

    model_config = ConfigDict(extra="forbid")
    question: str
    answer: str


class GroundedPair(BaseModel):
    """A grounded skill's pair: a new context first, so the question and answer are drawn from it."""

    model_config = ConfigDict(extra="forbid")
    context: str
    question: str
    answer: str


OUTPUT = {"freeform": Pair, "grounded": GroundedPair, "knowledge": Pair}

TABLE = tables.contract(
    "leaf_pairs",
    [
        ("pair_id", S),
        ("leaf", S),
        ("kind", S),
        ("grounded", B),
        ("chunk_id", S),
        ("context", S),
        ("question", S),
        ("answer", S),
        ("round", INT),
        ("index", INT),
    ]
    + tables.LLM_ACCOUNTING,
    key="pair_id",
    parent="leaf",
    parent_table="taxonomy_leaves",
)

# A request's columns (its knowledge chunk's text is joined in as `context`).
PLAN_SCHEMA = (
    "pair_id string, leaf string, kind string, grounded boolean, mode string, round int, index int, "
    "chunk_id string, description string, outline string, examples string"
)
COLUMNS = ("pair_id", "leaf", "kind", "grounded", "mode", "round", "index", "chunk_id", "context")
COLUMNS += ("description", "outline", "examples")


def requested(need: int, spare: float) -> int:
    """Requests for `need` pairs: the need and its spare share, rounded up."""
    return need + math.ceil(need * spare) if need > 0 else 0


def mode(leaf: dict) -> str:
    if leaf["kind"] == "knowledge":
        return "knowledge"
    return "grounded" if leaf["grounded"] else "freeform"


def pair_id(leaf: str, round_: int, index: int) -> str:
    return hashlib.sha256(f"{leaf}\x00{round_}\x00{index}".encode()).hexdigest()[:16]


def request(leaf: dict, round_: int, index: int, chunk_id: str | None, examples: list[dict], shown: int) -> dict:
    """One request row: its few-shot examples turn with (round, index), so a re-planned request renders the same."""
    m = mode(leaf)
    pool = [e for e in examples if e["context"]] if m == "grounded" else examples
    pool = pool or examples
    start = round_ * 7 + index
    few = [pool[(start + k) % len(pool)] for k in range(min(shown, len(pool)))] if pool else []
    few = [{"question": e["question"], "answer": e["answer"], "context": e["context"]} for e in few]
    if m != "grounded":
        few = [{**e, "context": None} for e in few]  # a knowledge request's context is its chunk
    return {
        "pair_id": pair_id(leaf["leaf"], round_, index),
        "leaf": leaf["leaf"],
        "kind": leaf["kind"],
        "grounded": bool(leaf["grounded"]),
        "mode": m,
        "round": round_,
        "index": index,
        "chunk_id": chunk_id,
        "description": leaf["description"],
        "outline": leaf["document_outline"],
        "examples": json.dumps(few, ensure_ascii=False),
    }


def leaf_chunks(leaf: dict, chunks: dict[str, list[str]]) -> list[str]:
    """A knowledge leaf's chunk ids: its documents' chunks, file by file (in `documents` order), by position."""
    return [c for source in json.loads(leaf["documents"] or "[]") for c in chunks.get(source, [])]


def plan_round(
    leaf: dict, round_: int, count: int, start: int, examples: list[dict], chunk_ids: list[str], shown: int
) -> list[dict]:
    """`count` requests of `leaf` in `round_`; a knowledge leaf's take its chunks round-robin from `start`."""
    rows = []
    for index in range(count):
        chunk = chunk_ids[(start + index) % len(chunk_ids)] if leaf["kind"] == "knowledge" else None
        rows.append(request(leaf, round_, index, chunk, examples, shown))
    return rows


def prompts(batch: pd.DataFrame, *, template: str) -> list[list[dict]]:
    """Rows -> requests: one new pair each."""
    out = []
    for m, description, outline, context, examples, round_, index in zip(
        batch["mode"],
        batch["description"],
        batch["outline"],
        batch["context"],
        batch["examples"],
        batch["round"],
        batch["index"],
    ):
        content = render(
            template,
            mode=m,
            description=description,
            outline=outline,
            context=context,
            examples=json.loads(examples),
            number=f"{int(round_) + 1}.{int(index) + 1}",
        )
        out.append([{"role": "user", "content": content}])
    return out


def to_rows(replies: DataFrame, *, mode_: str) -> DataFrame:
    """Replies -> rows: the pair (null where the request failed); a grounded skill's context from the reply, a
    knowledge pair's the chunk it was asked about."""
    reply = llm_stage.parsed(replies, OUTPUT[mode_])
    context = reply.getField("context") if mode_ == "grounded" else F.col("context")
    if mode_ == "freeform":
        context = F.lit(None).cast("string")
    return replies.select(
        "pair_id",
        "leaf",
        "kind",
        "grounded",
        "chunk_id",
        context.alias("context"),
        reply.getField("question").alias("question"),
        reply.getField("answer").alias("answer"),
        "round",
        "index",
        *[n for n, _ in tables.LLM_ACCOUNTING],
    )


def step(g: LeafGenerationConfig, mode_: str) -> LLMStep:
    return LLMStep(
        name="leaf_generation",
        table=TABLE,
        key="pair_id",
        columns=COLUMNS,
        output=OUTPUT[mode_],
        settings=g,
        template=g.template,
        prompts=functools.partial(prompts, template=g.template),
        rows=functools.partial(to_rows, mode_=mode_),
    )


def _inputs(ctx: RunContext) -> tuple[list[dict], dict[str, list[dict]], dict[str, list[str]]]:
    """The leaves, each leaf's seed examples (in file order) and each document's chunk ids (by position)."""
    leaves = [r.asDict() for r in ctx.read("taxonomy_leaves").orderBy("leaf").collect()]
    examples: dict[str, list[dict]] = {}
    for r in ctx.read("taxonomy_examples").orderBy("leaf", "index").collect():
        examples.setdefault(r.leaf, []).append(r.asDict())
    chunks: dict[str, list[str]] = {}
    if any(leaf["kind"] == "knowledge" for leaf in leaves):
        for r in (
            ctx.read("document_chunks").select("chunk_id", "source", "position").orderBy("source", "position").collect()
        ):
            chunks.setdefault(r.source, []).append(r.chunk_id)
    missing = [leaf["leaf"] for leaf in leaves if leaf["kind"] == "knowledge" and not leaf_chunks(leaf, chunks)]
    if missing:
        raise StageError(
            f"leaf_generation: knowledge leaf(s) {', '.join(missing)} have no chunk in document_chunks (their "
            "documents: taxonomy_leaves.documents); run the documents stage on the folder their patterns name"
        )
    return leaves, examples, chunks


def plan(
    ctx: RunContext, leaves: list[dict], examples: dict, chunks: dict, missing: dict[str, int] | None = None
) -> tuple[list[dict], bool]:
    """The requests of this run, and whether they are the whole plan (a plain run) or only those of a top-up
    round for `missing` (leaf -> kept pairs still missing)."""
    g, per_leaf = ctx.cfg.taxonomy.generation, ctx.cfg.taxonomy.per_leaf
    by_leaf = {leaf["leaf"]: leaf for leaf in leaves}
    have = [r.asDict() for r in ctx.read(TABLE, kept=False).select("leaf", "round", "index", "chunk_id").collect()]
    if missing is not None:  # a top-up round: the short leaves' missing pairs, under each one's next round
        rows, had = [], {}
        for h in have:
            had.setdefault(h["leaf"], []).append(h)
        for name, need in sorted(missing.items()):
            if name not in by_leaf or need <= 0:
                continue
            own = had.get(name, [])
            next_round = max([h["round"] for h in own], default=0) + 1
            if next_round > ctx.cfg.taxonomy.max_rounds:  # rounds are bounded over every run, not per run
                continue
            leaf = by_leaf[name]
            count = requested(need, g.spare)
            rows += plan_round(
                leaf, next_round, count, len(own), examples.get(name, []), leaf_chunks(leaf, chunks), g.examples
            )
        return rows, False
    count = requested(per_leaf, g.spare)
    rows = []
    for leaf in leaves:
        rows += plan_round(leaf, 0, count, 0, examples.get(leaf["leaf"], []), leaf_chunks(leaf, chunks), g.examples)
    # Earlier top-up rounds' requests stay in the plan (a failed one is asked again), each as it was first asked.
    known = {c for ids in chunks.values() for c in ids}
    for h in sorted(have, key=lambda h: (h["leaf"], h["round"], h["index"])):
        leaf = by_leaf.get(h["leaf"])
        if leaf is None or h["round"] == 0 or (leaf["kind"] == "knowledge" and h["chunk_id"] not in known):
            continue
        rows.append(request(leaf, h["round"], h["index"], h["chunk_id"], examples.get(h["leaf"], []), g.examples))
    return rows, True


def run(ctx: RunContext, missing: dict[str, int] | None = None) -> StageResult:
    """The plan's requests, or with `missing` a top-up round's (its `top_up`, core/rounds.py)."""
    cfg = ctx.cfg
    leaves, examples, chunks = _inputs(ctx)
    if not leaves:
        return StageResult(metrics={"disabled": "taxonomy_leaves is empty: run the taxonomy stage first"})
    planned, whole = plan(ctx, leaves, examples, chunks, missing)
    names = [c.split()[0] for c in PLAN_SCHEMA.split(", ")]
    source = ctx.spark.createDataFrame(pd.DataFrame(planned, columns=names), PLAN_SCHEMA)
    texts = ctx.read("document_chunks").select("chunk_id", F.col("text").alias("context"))
    source = source.join(texts, "chunk_id", "left").select(*COLUMNS)
    result = StageResult(tables=[TABLE])
    if whole:  # the table holds the plan's requests only: a smaller per_leaf or a removed leaf leaves no stale pair
        result.metrics["deleted"] = tables.delete_absent(ctx.spark, ctx.rt, TABLE, "pair_id", source.select("pair_id"))
    for m in [m for m in MODES if any(r["mode"] == m for r in planned)]:
        result.add(llm_stage.run(ctx, step(cfg.taxonomy.generation, m), source.where(F.col("mode") == m)))
    result.metrics["leaves"] = len({r["leaf"] for r in planned})
    result.metrics["requests_per_mode"] = {m: sum(r["mode"] == m for r in planned) for m in MODES}
    if not whole:
        result.metrics["topup_rounds"] = sorted({r["round"] for r in planned})
    return result


STAGE = Stage(
    name="leaf_generation",
    help="generate question and answer pairs for every taxonomy leaf (skills few-shot from their seed examples, "
    "knowledge from each chunk of the leaf's documents) into leaf_pairs",
    run=run,
    reads=("taxonomy_leaves", "taxonomy_examples", "document_chunks"),
    writes=(TABLE,),
    config=LeafGenerationConfig,
    section="taxonomy.generation",
    off=switch.no_pairs,
    top_up=run,
)
