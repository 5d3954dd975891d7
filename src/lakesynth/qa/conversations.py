"""Conversations stage: kept pairs (`synthetic_responses`) -> `conversation_turns`, each pair continued into a dialog.

From each kept pair the teacher continues the dialog for `conversations.turns` more turns (drawn per conversation).
A turn is two rows: a simulated user (a persona from `personas`) writes the next message, of a kind drawn from
`mix` (follow-up, clarification, pushback after a refusal, an off-topic switch, a correction), then the assistant
replies under the domain rules; both are structured outputs, and each request carries the whole dialog so far.

The work runs in rounds: round k is the next message of every unfinished conversation, all sent at once through
the LLM loop (llm_stage), so turns are sequential within a conversation and parallel across conversations. Every
message is a row as soon as its round is merged, and the loop journals each finished request: a crash costs the
requests in flight, and a rerun continues each conversation from its last stored message. A failed message is
its row's error; its conversation waits for the next run.
"""

from __future__ import annotations

import functools
import json
from typing import ClassVar, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig, Personas, Section
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult
from lakesynth.core.tables import INT, B, S
from lakesynth.core.templates import render
from lakesynth.qa import dialogs
from lakesynth.qa.answers import Answer


class UserMessage(BaseModel):
    """The simulated user's reply: what they want now, then the message they send."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str = Field(description="One sentence: what the customer wants now")
    message: str = Field(description="The customer's next message")


class SimulatedUserConfig(LLMStageConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "conversation_user.j2"
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(384, ge=16, description="Completion token limit.")


class AssistantConfig(LLMStageConfig):
    DEFAULT_TEMPLATE: ClassVar[str] = "conversation_assistant.j2"
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(640, ge=16, description="Completion token limit.")


class ConversationsConfig(Section):
    enabled: bool = Field(False, description="Continue each kept pair into a multi-turn conversation.")
    turns: tuple[int, int] = Field(
        (1, 3), description="Follow-up turns after the pair, [least, most], drawn per conversation (seeded)."
    )
    mix: dict[str, float] = Field(
        {"follow_up": 0.4, "clarification": 0.2, "pushback": 0.15, "off_topic": 0.15, "correction": 0.1},
        description="Kind of each next user message -> weight (follow_up, clarification, pushback, off_topic, "
        "correction); pushback is drawn only after a message the assistant had to refuse.",
    )
    personas: Personas = Field(
        default_factory=lambda: Personas(
            roles=["a first-time customer", "a long-standing customer", "a small-business owner"],
            tones=["polite", "hurried", "frustrated"],
        ),
        description="Users the conversations are written as, one drawn per conversation (none: no persona).",
    )
    on_bad_turn: Literal["drop", "truncate"] = Field(
        "drop",
        description="An assistant turn the judge fails: drop the whole conversation, or keep it up to the last good "
        "turn when at least one follow-up turn remains.",
    )
    share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the pairs with a kept conversation that enter the training data as the conversation "
        "rather than as the single question and answer (drawn per pair; never both).",
    )
    seed: int = Field(7, description="Seed of the draws (turns, persona, kinds, share).")
    user: SimulatedUserConfig = Field(default_factory=SimulatedUserConfig, description="The simulated user's calls.")
    assistant: AssistantConfig = Field(default_factory=AssistantConfig, description="The assistant's calls.")

    @field_validator("turns")
    @classmethod
    def _range(cls, turns: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= turns[0] <= turns[1] <= 20:
            raise ValueError(f"must be [least, most] with 1 <= least <= most <= 20 (got {list(turns)})")
        return turns

    @field_validator("mix")
    @classmethod
    def _kinds(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(dialogs.KINDS))
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; known: {', '.join(dialogs.KINDS)}")
        if any(w < 0 for w in mix.values()) or not sum(mix.values()) > 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return mix


TABLE = tables.contract(
    "conversation_turns",
    [
        ("turn_id", S),
        ("conversation_id", S),
        ("seed_id", S),
        ("topic", S),
        ("turn", INT),
        ("role", S),
        ("kind", S),
        ("persona", S),
        ("in_scope", B),
        ("content", S),
        ("reasoning", S),
    ]
    + tables.LLM_ACCOUNTING,
    key="turn_id",
    parent="conversation_id",  # the pair's question_id: one conversation per kept pair
    parent_table="synthetic_responses",
)
PLANNED = (
    "turn_id string, conversation_id string, seed_id string, topic string, turn int, role string, kind string, "
    "persona string, in_scope boolean, dialog string"
)
COLUMNS = tuple(dialogs.names(PLANNED))


def stored(pairs: DataFrame, turns: DataFrame) -> DataFrame:
    """Each kept pair with its stored messages that succeeded (dialogs.with_stored)."""
    ok = turns.where(F.col("error").isNull() & F.col("content").isNotNull())
    return dialogs.with_stored(pairs, ok.select("conversation_id", "turn", "role", "kind", "in_scope", "content"))


def plan_round(row: dict, *, turn: int, role: str, c: ConversationsConfig) -> dict | None:
    """The conversation's message `role` of `turn`, if it is due: its turns reach that far, every message before it
    is stored, and none of them copies an earlier one (conversations.judge.copy_share). The user's kind is drawn
    (pushback only after a refused message); the assistant's row takes its turn's user message's kind and scope."""
    cid = str(row["conversation_id"])
    upto = 2 * (turn - 2) + ROLE_INDEX[role]
    rows = dialogs.history(row["stored"])
    if turn > dialogs.last_turn(cid, c.seed, c.turns) or not dialogs.contiguous(rows, upto):
        return None
    rows = rows[:upto]
    if dialogs.first_copy(row["question"], row["answer"], rows, c.judge.copy_share):
        return None  # a message copies an earlier one: conversation_judge fails the dialog there, so it ends
    user_scopes = [bool(row["in_scope"])] + [bool(r["in_scope"]) for r in rows if r["role"] == "user"]
    if role == "user":
        kind = dialogs.next_kind(cid, turn, c.seed, c.mix, refused=not user_scopes[-1])
        in_scope = False if kind in dialogs.OUT_OF_SCOPE else bool(row["in_scope"])
    else:
        kind, in_scope = rows[-1]["kind"], user_scopes[-1]
    who = dialogs.persona(cid, c.seed, c.personas.all())
    return {
        "turn_id": f"{cid}:{turn}:{role}",
        "conversation_id": cid,
        "seed_id": row["seed_id"],
        "topic": row["topic"],
        "turn": turn,
        "role": role,
        "kind": kind,
        "persona": who.model_dump_json() if who else None,
        "in_scope": in_scope,
        "dialog": dialogs.as_json(dialogs.messages(row["question"], row["answer"], rows)),
    }


ROLE_INDEX = {r: i for i, r in enumerate(dialogs.ROLES)}


def prompts(batch: pd.DataFrame, *, template: str, rules: str) -> list[list[dict]]:
    """Rows -> requests: the whole dialog so far, with the user's persona and kind or the assistant's scope."""
    out = []
    for row in batch.to_dict("records"):
        persona = json.loads(row["persona"]) if row["persona"] else None
        text = render(
            template,
            rules=rules,
            transcript=dialogs.transcript(json.loads(row["dialog"])),
            kind=dialogs.KINDS[row["kind"]],
            persona=persona,
            in_scope=bool(row["in_scope"]),
            turn=int(row["turn"]),
        )
        out.append([{"role": "user", "content": text}])
    return out


def to_turn_rows(replies: DataFrame, *, output: type[BaseModel], field: str) -> DataFrame:
    """Replies -> rows: the message (`field` of the reply) as `content`; an empty one is an error."""
    reply = llm_stage.parsed(replies, output)
    content = reply.getField(field)
    error = F.coalesce(
        F.col("error"),
        F.when(content.isNull() | (F.trim(content) == ""), F.lit(f"EmptyMessage: the reply had no {field}")),
    )
    return replies.select(
        *[c for c in replies.columns if c not in ("output", "error", "raw_output", "dialog")],
        F.when(error.isNull(), content).alias("content"),
        reply.getField("reasoning").alias("reasoning"),
        error.alias("error"),
        F.coalesce(F.col("raw_output"), F.when(error.isNotNull(), F.col("output"))).alias("raw_output"),
    )


def step(cfg, role: str) -> LLMStep:
    c = cfg.conversations
    settings, output, field = (c.user, UserMessage, "message") if role == "user" else (c.assistant, Answer, "answer")
    return LLMStep(
        name=f"conversations_{role}",
        table=TABLE,
        key="turn_id",
        columns=COLUMNS,
        output=output,
        settings=settings,
        template=settings.template,
        prompts=functools.partial(prompts, template=settings.template, rules=cfg.use_case.rules),
        rows=functools.partial(to_turn_rows, output=output, field=field),
    )


def due(ctx: RunContext, pairs: DataFrame, turn: int, role: str) -> DataFrame:
    """The messages of round (`turn`, `role`): one per conversation that has reached it, planned, staged once (the
    LLM loop reads its source several times)."""
    each = functools.partial(plan_round, turn=turn, role=role, c=ctx.cfg.conversations)
    plan = functools.partial(dialogs.each_row, each=each, ddl=PLANNED)
    rows = stored(pairs, ctx.read(TABLE, kept=False)).mapInPandas(plan, PLANNED)
    return tables.materialize(ctx.spark, ctx.rt, "conversations_due", rows)


def run(ctx: RunContext) -> StageResult:
    c = ctx.cfg.conversations
    # The pairs every check kept (the pair gate: pair_verdicts and the checks before it).
    pairs = ctx.read("synthetic_responses").where(F.col("error").isNull() & F.col("answer").isNotNull())
    result = StageResult(tables=[TABLE])
    rounds = 0
    for turn in range(2, 2 + c.turns[1]):
        for role in dialogs.ROLES:
            source = due(ctx, pairs, turn, role)
            if not source.limit(1).collect():
                continue
            rounds += 1
            print(f"conversations: round {rounds}: turn {turn}, {role}", flush=True)
            result.add(llm_stage.run(ctx, step(ctx.cfg, role), source))
    result.rows_in = pairs.count()
    result.tables = [TABLE]
    result.metrics["rounds"] = rounds
    return result


STAGE = Stage(
    name="conversations",
    help="continue each kept pair into a multi-turn dialog (simulated user, then the assistant), into "
    "conversation_turns",
    run=run,
    reads=("synthetic_responses",),
    writes=(TABLE,),
    config=ConversationsConfig,
)
