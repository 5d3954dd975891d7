"""What the conversation stages share: each conversation's plan, drawn from seeded hashes (its number of turns, its
persona, the kind of each next user message), and its dialog so far, rebuilt from the pair and the stored turns.

A conversation grows from one kept pair (`synthetic_responses`): turn 1 is the pair's question and answer; turns 2,
3 ... are the stored rows of `conversation_turns`, a user message then the assistant's reply. The plan depends only
on the conversation's id and the config, so every stage and every rerun draws the same one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakesynth.config import Persona
from lakesynth.quality import rules
from lakesynth.training import examples

# The kinds of next user message, as the simulated user is asked for them.
KINDS = {
    "follow_up": "a follow-up question on the assistant's last answer, going further on the same subject",
    "clarification": "a request to clarify or explain something in the assistant's last answer",
    "pushback": "pushback after the assistant declined: the customer insists, gives a reason, and asks again for "
    "what was refused",
    "off_topic": "a switch to another subject the assistant must not help with (out of scope under its rules)",
    "correction": "a correction of a wrong assumption made earlier in the conversation (a detail the assistant "
    "assumed, or one the customer stated wrongly before)",
}
OUT_OF_SCOPE = ("off_topic", "pushback")  # kinds whose message asks for what the rules refuse
ROLES = ("user", "assistant")  # the two rows of a turn, in order
COPY_NGRAM = 6  # words per n-gram of the copy rule, as the rule checks' leak check
WHO = {"user": "customer", "assistant": "assistant"}


def draw(*parts) -> float:
    """A number in [0, 1) from a hash of `parts`: the same parts, the same draw, on any machine."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


def last_turn(conversation_id: str, seed: int, turns: tuple[int, int]) -> int:
    """The conversation's last turn: 1 (the pair) plus its follow-up turns, drawn in the `turns` range."""
    low, high = turns
    return 1 + low + int(draw(seed, "turns", conversation_id) * (high - low + 1))


def persona(conversation_id: str, seed: int, personas: list[Persona]) -> Persona | None:
    """The user the conversation's messages are written as (None: no personas configured)."""
    if not personas:
        return None
    return personas[int(draw(seed, "persona", conversation_id) * len(personas))]


def next_kind(conversation_id: str, turn: int, seed: int, mix: dict[str, float], refused: bool) -> str:
    """The kind of the user message opening `turn`, drawn from `mix`; pushback only after a refused message."""
    weights = {k: w for k, w in mix.items() if w > 0 and (k != "pushback" or refused)}
    if not weights:
        return "follow_up"
    point, total = draw(seed, "kind", conversation_id, turn) * sum(weights.values()), 0.0
    for kind, weight in weights.items():
        total += weight
        if point < total:
            return kind
    return kind


def with_stored(pairs: DataFrame, stored: DataFrame) -> DataFrame:
    """One row per pair (`conversation_id`, `seed_id`, `topic`, `in_scope`, `question`, `answer`) with `stored`, its
    messages (the rows of `stored`, all but their `conversation_id`, as structs; null for none). One aggregation,
    then plain rows: a pandas function per group costs the engine milliseconds a conversation."""
    fields = [c for c in stored.columns if c != "conversation_id"]
    grouped = stored.groupBy("conversation_id").agg(F.collect_list(F.struct(*fields)).alias("stored"))
    base = pairs.select(
        F.col("question_id").alias("conversation_id"), "seed_id", "topic", "in_scope", "question", "answer"
    )
    return base.join(grouped, "conversation_id", "left")


def history(stored) -> list[dict]:
    """A conversation's stored messages (`with_stored`), in order: turn, then user before assistant."""
    return sorted(examples.records(stored), key=lambda r: (int(r["turn"]), ROLES.index(r["role"])))


def contiguous(rows: list[dict], upto: int) -> bool:
    """Whether `rows` are exactly the first `upto` messages after the pair: turn 2's user and assistant, then
    turn 3's ... with no gap and no duplicate."""
    expected = [(2 + i // 2, ROLES[i % 2]) for i in range(upto)]
    return [(int(r["turn"]), r["role"]) for r in rows[:upto]] == expected and len(rows) >= upto


def messages(question: str, answer: str, rows: list[dict]) -> list[dict]:
    """The dialog as chat messages: the pair, then the stored turns' contents."""
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}] + [
        {"role": r["role"], "content": r["content"]} for r in rows
    ]


def transcript(dialog: list[dict]) -> str:
    """The dialog as the text a request carries: every message, named by who wrote it."""
    names = {"user": "Customer", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in dialog)


def as_json(dialog: list[dict]) -> str:
    return json.dumps(dialog, ensure_ascii=False)


def names(ddl: str) -> list[str]:
    """The column names of a DDL schema string ("a string, b int")."""
    return [c.split()[0] for c in ddl.split(", ")]


def each_row(batches: Iterator[pd.DataFrame], *, each, ddl: str) -> Iterator[pd.DataFrame]:
    """mapInPandas body: the rows `each(row)` makes (None, a dict, or a list of them) of every row, as `ddl`."""
    for batch in batches:
        out = []
        for row in batch.to_dict("records"):
            made = each(row)
            out += made if isinstance(made, list) else [made] if made else []
        yield pd.DataFrame(out, columns=names(ddl))


def draw_column(*parts) -> F.Column:
    """`draw` in the engine: the same number for the same parts (columns or values)."""
    text = F.concat_ws("|", *[p if isinstance(p, F.Column) else F.lit(str(p)) for p in parts])
    return F.conv(F.substring(F.sha2(text, 256), 1, 13), 16, 10).cast("double") / float(16**13)


def later_messages(turns: DataFrame, verdicts: DataFrame) -> DataFrame:
    """One row per kept conversation (`conversation_verdicts`): `conversation_id` and `later`, its messages after the
    pair up to its last kept turn, in order, as examples.MESSAGE."""
    kept = verdicts.where("keep").select("conversation_id", "kept_turns")
    ok = turns.where(F.col("error").isNull() & F.col("content").isNotNull()).join(kept, "conversation_id")
    ok = ok.where(F.col("turn") <= F.col("kept_turns"))
    order = F.when(F.col("role") == "user", 0).otherwise(1)
    stored = ok.groupBy("conversation_id").agg(
        F.sort_array(F.collect_list(F.struct("turn", order.alias("order"), "role", "content"))).alias("stored")
    )
    later = F.transform(
        "stored",
        lambda m: F.struct(
            m["role"].alias("role"),
            m["content"].alias("content"),
            F.lit(None).cast(T.ArrayType(examples.TOOL_CALL)).alias("tool_calls"),
            F.lit(None).cast("string").alias("tool_call_id"),
        ),
    )
    return stored.select("conversation_id", later.cast(examples.MESSAGES).alias("later"))


def copy_of(text: str, earlier: list[dict], share: float) -> str | None:
    """How `text` copies an earlier message (`earlier`: the dialog's messages from the pair on, as `messages` gives
    them, so message j is of turn 1 + j // 2), the latest first, or None: `share` or more of its words, and twice
    COPY_NGRAM or more, lie in runs of COPY_NGRAM words that message also has."""
    words = len(rules.words(text))
    for j in reversed(range(len(earlier))):
        m = earlier[j]
        _, copied = rules.copied_span(text, rules.ngrams(m["content"], COPY_NGRAM), COPY_NGRAM)
        if copied >= 2 * COPY_NGRAM and copied / words >= share:  # a short follow-up may reuse a phrase
            return f"copies {copied / words:.0%} of the {WHO[m['role']]}'s turn {1 + j // 2}"
    return None


def copied(question: str, answer: str, rows: list[dict], i: int, share: float | None) -> str | None:
    """How stored message `rows[i]` (of contiguous `rows`, from turn 2) copies an earlier message of the dialog
    (copy_of: `the customer's message (turn 2) copies 97% of the assistant's turn 1`), or None (also with no copy
    rule: `share` None)."""
    if share is None:
        return None
    *before, message = messages(question, answer, rows[: i + 1])
    how = copy_of(message["content"], before, share)
    return f"the {WHO[message['role']]}'s message (turn {int(rows[i]['turn'])}) {how}" if how else None


def first_copy(question: str, answer: str, rows: list[dict], share: float | None) -> tuple[int, str] | None:
    """The first stored message of `rows` (in order, from turn 2) that copies an earlier one: its index and how;
    None when none does."""
    for i in range(len(rows)):
        how = copied(question, answer, rows, i, share)
        if how:
            return i, how
    return None
