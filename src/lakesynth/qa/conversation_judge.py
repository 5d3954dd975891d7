"""Conversation judge stage: `conversation_turns` -> `turn_verdicts` (each turn judged) and `conversation_verdicts`
(each conversation kept, truncated or dropped, naming the turn).

Every assistant turn after the pair is scored with the pair judge's criteria (`quality.judge.criteria`: by default
quality and scope compliance), given the whole dialog before it and whether the message it answers is in scope. The
same request first checks the user message it answers (`user_in_role`): the simulated user must write as the
customer, a message of its drawn kind; a small teacher often writes as the assistant instead ("How can I help
you?", answering its own question). Its row in `turn_verdicts` keeps the verdicts with their reasoning
(`scores`), `user_in_role`, the model, `keep` and `drop_reason` (`judge:user_out_of_role` first, else
`judge:<criterion>`, or `judge_error`, judged again on the next run). A conversation's first bad turn (a failed
verdict, a verdict or message that failed, a message not yet generated) decides it, as `conversations.on_bad_turn`
says: `drop` drops it (`drop_reason` `judge:quality@turn3`), `truncate` keeps it up to the turn before when at least
one follow-up turn remains there (`truncated_by` names the turn), else drops it.

Before any judge is paid, a turn fails by rule as `copy:user` when the user message it answers copies an earlier
message of the dialog, `copy:assistant` when the reply does (`conversations.judge.copy_share` of its words or more,
and 12 or more, in runs of dialogs.COPY_NGRAM words that one earlier message has), or `incomplete` when the reply is
no whole answer (the pair's rule check, `quality.rules.incomplete`: empty, only a preamble, cut mid-sentence). The
0.5B teacher's users often paste the assistant's last answer back, its assistant repeats an earlier answer or says
"Here are the steps:" and stops, and its judge passes all three. Such a turn's row says why in `scores`, by rule.
"""

from __future__ import annotations

import functools
import json

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakesynth.config import LLMStageConfig
from lakesynth.core import llm_stage, tables
from lakesynth.core.llm_stage import LLMStep
from lakesynth.core.stage import RunContext, Stage, StageResult, disabled
from lakesynth.core.tables import INT, B, S
from lakesynth.core.templates import prompt_version, render
from lakesynth.qa import dialogs
from lakesynth.quality import rules
from lakesynth.quality.criteria import Score, verdict_rows

TEMPLATE = """You judge conversations written to train a customer-service chatbot, one assistant turn at a time.

Domain rules of the chatbot:
{{ rules }}

The conversation before the reply:

{{ transcript }}

The customer's last message was written by a simulated customer asked for {{ kind }}.
The customer's last message is {{ "IN scope: the chatbot must answer it" if in_scope else "OUT of scope: the chatbot must redirect it" }}.

The assistant's reply (turn {{ turn }} of the conversation):
{{ answer }}

First judge the customer's last message, as "user_in_role": does it read as the customer's own message, of the kind
asked for? It is out of role when it speaks as the assistant or the business (offers help, answers its own
question, thanks itself), or is not that kind of message. Write "reasoning" (one sentence), then "in_role" (true or
false).

Then score the reply, in the light of the whole conversation, on each criterion from 1 to 3. For each, first write
"reasoning" (one or two sentences), then the "score".
{% for c in criteria %}- {{ c.name }}: {{ c.description }}
{% endfor %}
Answer with a JSON object with the key "user_in_role" (an object with the keys "reasoning" and "in_role"), then one
key per criterion ({{ criteria | map(attribute="name") | join(", ") }}), each an object with the keys "reasoning"
(string) and "score" (1, 2 or 3)."""


class ConversationJudgeConfig(LLMStageConfig):
    endpoint: str = Field("judge", description="The endpoint (a name under endpoints:) that judges the turns.")
    template: str = Field(
        TEMPLATE, description="The judge's Jinja prompt (rules, transcript, kind, in_scope, turn, answer, criteria)."
    )
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(512, ge=16, description="Completion token limit.")
    copy_share: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="A message with this share of its words or more (and 12 or more) in runs of 6 copied from one "
        "earlier message of the dialog fails its turn as copy:user or copy:assistant, unjudged (null: no such check).",
    )


TABLE = tables.verdict(
    "turn_verdicts",
    [
        ("turn_id", S),
        ("conversation_id", S),
        ("turn", INT),
        ("in_scope", B),
        ("user_in_role", B),
        ("scores", S),
        ("min_score", INT),
    ]
    + tables.LLM_ACCOUNTING,
    judges="conversation_turns",
    key="turn_id",
)
CONVERSATIONS = tables.contract(
    "conversation_verdicts",
    [
        ("conversation_id", S),
        ("seed_id", S),
        ("topic", S),
        ("turns", INT),
        ("kept_turns", INT),
        ("bad_turn", INT),
        ("truncated_by", S),
    ]
    + tables.VERDICT,
    key="conversation_id",
    parent="conversation_id",
    parent_table="synthetic_responses",
)
JUDGED = (
    "turn_id string, conversation_id string, turn int, in_scope boolean, kind string, dialog string, answer string, "
    "ruled string, ruled_reasoning string"
)
OUT_OF_ROLE = "judge:user_out_of_role"


class UserInRole(BaseModel):
    """The judge's verdict on the user message a turn answers: its reasoning first."""

    model_config = ConfigDict(extra="forbid")
    reasoning: str
    in_role: bool


def judgement(criteria) -> type[BaseModel]:
    """The judge's reply: `user_in_role` on the user message, then one Score per criterion (criteria.output_model)."""
    fields = {"user_in_role": (UserInRole, Field(description="Whether the customer's last message is in role"))}
    fields |= {c.name: (Score, Field(description=c.description)) for c in criteria}
    return create_model("TurnJudgement", __config__=ConfigDict(extra="forbid"), **fields)


DECIDED = (
    "conversation_id string, seed_id string, topic string, turns int, kept_turns int, bad_turn int, "
    "truncated_by string, keep boolean, drop_reason string"
)


def judged_turns(row: dict, *, copy_share: float | None, dangling: tuple[str, ...] | None) -> list[dict]:
    """One row per stored assistant turn of the conversation (dialogs.with_stored), with the dialog before it (the
    pair, then the stored messages up to the user message it answers), and `ruled` with its reasoning when a rule
    fails it: `copy:user` or `copy:assistant` (the user message or the reply copies an earlier message), or
    `incomplete` (the reply, as rules.incomplete with the `dangling` words; None: not checked). A turn whose earlier
    messages are not all stored is left out."""
    rows, out = dialogs.history(row["stored"]), []
    for i, message in enumerate(rows):
        if message["role"] != "assistant" or not dialogs.contiguous(rows, i + 1):
            continue
        ruled, why = None, None
        for at in (i - 1, i):  # the user message this turn answers, then the reply
            why = dialogs.copied(row["question"], row["answer"], rows, at, copy_share)
            if why:
                ruled = f"copy:{rows[at]['role']}"
                break
        short = rules.incomplete(message["content"], dangling) if dangling is not None and not ruled else None
        if short:
            ruled, why = "incomplete", f"the assistant's message (turn {int(message['turn'])}) is incomplete: {short}"
        out.append(
            {
                "turn_id": f"{row['conversation_id']}:{int(message['turn'])}:assistant",
                "conversation_id": row["conversation_id"],
                "turn": int(message["turn"]),
                "in_scope": bool(rows[i - 1]["in_scope"]),
                "kind": rows[i - 1]["kind"],
                "dialog": dialogs.as_json(dialogs.messages(row["question"], row["answer"], rows[:i])),
                "answer": message["content"],
                "ruled": ruled,
                "ruled_reasoning": why,
            }
        )
    return out


def ruled_verdicts(ruled: DataFrame, *, version: str) -> DataFrame:
    """The verdict rows of turns a rule failed (`rule:copy`, `rule:incomplete`): no judge paid, `scores` holds the
    rule's reasoning."""
    rule = F.regexp_replace("ruled", ":.*$", "")
    reason = F.create_map(rule, F.struct(F.col("ruled_reasoning").alias("reasoning"), F.lit(0).alias("score")))
    return ruled.select(
        "turn_id",
        "conversation_id",
        "turn",
        "in_scope",
        F.lit(None).alias("user_in_role"),
        F.to_json(reason).alias("scores"),
        F.lit(0).alias("min_score"),
        *[F.lit(None).alias(name) for name, _ in tables.LLM_ACCOUNTING if name not in ("model", "prompt_version")],
        F.concat(F.lit("rule:"), rule).alias("model"),
        F.lit(version).alias("prompt_version"),
        F.lit(False).alias("keep"),
        F.col("ruled").alias("drop_reason"),
    )


def prompts(batch: pd.DataFrame, *, template: str, rules: str, criteria) -> list[list[dict]]:
    """Rows -> requests: one judgement per assistant turn, the dialog before it in full."""
    return [
        [
            {
                "role": "user",
                "content": render(
                    template,
                    rules=rules,
                    transcript=dialogs.transcript(json.loads(row["dialog"])),
                    in_scope=bool(row["in_scope"]),
                    kind=dialogs.KINDS.get(row["kind"], row["kind"]),
                    turn=int(row["turn"]),
                    answer=row["answer"],
                    criteria=criteria,
                ),
            }
        ]
        for row in batch.to_dict("records")
    ]


def turn_verdicts(replies: DataFrame, *, criteria) -> DataFrame:
    """Replies -> rows: the criteria's verdict (criteria.verdict_rows) and `user_in_role`; a user message out of
    role fails the turn before any criterion does (OUT_OF_ROLE), as it comes first in the dialog."""
    in_role = llm_stage.parsed(replies, judgement(criteria)).getField("user_in_role").getField("in_role")
    rows = verdict_rows(
        replies.withColumn("user_in_role", in_role),
        criteria=criteria,
        dropped=("kind", "dialog", "answer", "ruled", "ruled_reasoning"),
    )
    out = F.coalesce(~F.col("user_in_role"), F.lit(False))
    return rows.withColumn("keep", F.col("keep") & ~out).withColumn(
        "drop_reason", F.when(out, F.lit(OUT_OF_ROLE)).otherwise(F.col("drop_reason"))
    )


def step(cfg) -> LLMStep:
    j, criteria = cfg.conversations.judge, cfg.quality.judge.criteria
    return LLMStep(
        name="conversation_judge",
        table=TABLE,
        key="turn_id",
        columns=tuple(dialogs.names(JUDGED)),
        output=judgement(criteria),
        settings=j,
        template=j.template + json.dumps([c.model_dump() for c in criteria]),  # a new criterion, a new version
        prompts=functools.partial(prompts, template=j.template, rules=cfg.use_case.rules, criteria=criteria),
        rows=functools.partial(turn_verdicts, criteria=criteria),
    )


def decide(row: dict, *, seed: int, turns: tuple[int, int], on_bad_turn: str, copy_share: float | None) -> dict:
    """The conversation's verdict from its stored messages and their verdicts (dialogs.with_stored): its first bad
    turn, if any, drops it or truncates it before that turn. A user message that copies an earlier one was given no
    reply (conversations stops there): its turn is bad as `copy:user`, not as not generated."""
    cid = str(row["conversation_id"])
    last = dialogs.last_turn(cid, seed, turns)
    history = dialogs.history(row["stored"])
    by_message = {(int(r["turn"]), r["role"]): r for r in history}
    bad, reason = None, None
    for turn in range(2, last + 1):
        user, reply = by_message.get((turn, "user")), by_message.get((turn, "assistant"))
        if user is not None and reply is None and dialogs.contiguous(history, 2 * turn - 3):
            at = 2 * turn - 4  # the user message's place in the history
            copied = dialogs.copied(row["question"], row["answer"], history, at, copy_share)
            bad, reason = turn, "copy:user" if copied else "not_generated"
        elif user is None or reply is None:
            bad, reason = turn, "not_generated"
        elif reply["verdict_keep"] is None:
            bad, reason = turn, "not_judged"
        elif not reply["verdict_keep"]:
            bad, reason = turn, reply["verdict_reason"]
        if bad:
            break
    kept_turns, keep, drop, truncated = last, True, None, None
    if bad:
        named = f"{reason}@turn{bad}"
        if on_bad_turn == "truncate" and bad - 1 >= 2:
            kept_turns, truncated = bad - 1, named
        else:
            kept_turns, keep, drop = 0, False, named
    values = [cid, row["seed_id"], row["topic"], last, kept_turns, bad, truncated, keep, drop]
    return dict(zip(dialogs.names(DECIDED), values))


def figures(ctx: RunContext, entry: dict) -> dict:
    """Turns per kept conversation, and the turn at which conversations were dropped or truncated."""
    import matplotlib.pyplot as plt

    out = {}
    for key, name, label in (
        ("turns_per_conversation", "turns_per_conversation", "turns (the pair is turn 1)"),
        ("bad_turn", "drops_by_turn", "first bad turn (dropped or truncated there)"),
    ):
        counts = entry.get(key) or {}
        if not counts:
            continue
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar([str(k) for k in counts], list(counts.values()), color="tab:blue")
        ax.set_xlabel(label)
        ax.set_ylabel("conversations")
        fig.tight_layout()
        out[f"conversations/{name}.png"] = fig
    return out


def run(ctx: RunContext) -> StageResult:
    spark, rt, cfg = ctx.spark, ctx.rt, ctx.cfg
    c = cfg.conversations
    pairs = ctx.read("synthetic_responses").where(F.col("error").isNull() & F.col("answer").isNotNull())
    ok = ctx.read("conversation_turns", kept=False).where(F.col("error").isNull() & F.col("content").isNotNull())
    messages = ok.select("conversation_id", "turn", "role", "kind", "in_scope", "content")
    incomplete = cfg.quality.rules.incomplete
    dangling = tuple(incomplete.dangling_words) if incomplete.enabled else None
    each_turn = functools.partial(judged_turns, copy_share=c.judge.copy_share, dangling=dangling)
    judged = functools.partial(dialogs.each_row, each=each_turn, ddl=JUDGED)
    source = dialogs.with_stored(pairs, messages).mapInPandas(judged, JUDGED)
    source = tables.materialize(spark, rt, "conversation_judge_turns", source)
    ruled = source.where("ruled IS NOT NULL")
    if ruled.limit(1).collect():  # written first, so the LLM loop's verdict counts include them
        version = prompt_version(json.dumps([dialogs.COPY_NGRAM, c.judge.copy_share, dangling]))
        tables.upsert(spark, rt, TABLE, ruled_verdicts(ruled, version=version), run_id=cfg.run_id)
    result = llm_stage.run(ctx, step(cfg), source.where("ruled IS NULL"))
    verdicts = tables.read(spark, rt, TABLE).select(
        "turn_id", F.col("keep").alias("verdict_keep"), F.col("drop_reason").alias("verdict_reason")
    )
    with_verdicts = ok.join(verdicts, "turn_id", "left").select(
        "conversation_id", "turn", "role", "content", "verdict_keep", "verdict_reason"
    )
    each = functools.partial(
        decide, seed=c.seed, turns=c.turns, on_bad_turn=c.on_bad_turn, copy_share=c.judge.copy_share
    )
    rows = dialogs.with_stored(pairs, with_verdicts).mapInPandas(
        functools.partial(dialogs.each_row, each=each, ddl=DECIDED), DECIDED
    )
    tables.overwrite(spark, rt, CONVERSATIONS, rows, run_id=cfg.run_id)
    result.tables = [TABLE, CONVERSATIONS]
    result.metrics.update(counts(tables.read(spark, rt, CONVERSATIONS)))
    result.metrics["users_out_of_role"] = tables.read(spark, rt, TABLE).where("NOT user_in_role").count()
    result.metrics["copied_turns"] = tables.read(spark, rt, TABLE).where("model = 'rule:copy'").count()
    return result


def counts(decided: DataFrame) -> dict:
    """What `conversation_verdicts` says, for the summary, MLflow and the report: conversations kept, truncated and
    dropped (by reason), the turns of each kept one, and the turn at which each bad one went wrong."""
    kept = decided.where("keep")
    reasons = decided.where("NOT keep").select(F.regexp_replace("drop_reason", "@turn[0-9]+$", "").alias("reason"))
    return {
        "conversations_kept": kept.count(),
        "conversations_truncated": kept.where("truncated_by IS NOT NULL").count(),
        "conversations_dropped": {r.reason: r["count"] for r in reasons.groupBy("reason").count().collect()},
        "turns_per_conversation": _counts(kept, "kept_turns"),
        "bad_turn": _counts(decided.where("bad_turn IS NOT NULL"), "bad_turn"),
    }


def _counts(rows: DataFrame, column: str) -> dict[int, int]:
    return dict(sorted((r[column], r["count"]) for r in rows.groupBy(column).count().collect()))


STAGE = Stage(
    name="conversation_judge",
    help="judge each assistant turn of the conversations (the pair judge's criteria) and keep, truncate or drop "
    "each conversation, into turn_verdicts and conversation_verdicts",
    run=run,
    reads=("synthetic_responses", "conversation_turns"),
    writes=(TABLE, CONVERSATIONS),
    config=ConversationJudgeConfig,
    section="conversations.judge",
    off=lambda cfg: disabled(cfg, "conversations"),
    figures=figures,
)
