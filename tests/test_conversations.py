"""Conversations: kept pairs continued into dialogs, judged per assistant turn, and written as multi-turn chat data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import deltalake
import pandas as pd
import pytest
from conftest import ROOT, context, copy_schema, run_once, where
from test_cli import lakesynth

from lakesynth.config import with_overrides
from lakesynth.core import registry, tables
from lakesynth.qa import conversation_judge, conversations, dialogs, questions, responses
from lakesynth.qa import format as chat_format
from lakesynth.qa import seed as seeds
from lakesynth.training.checks import chat_violation

ON = ["questions.per_seed=1", "conversations.enabled=true", "conversations.turns=[1, 3]"]


def _score(value: int, in_role: bool = True) -> str:
    """A scripted judgement: the user message in role (or not), every default criterion at `value`."""
    scores = {c: {"reasoning": f"scripted {value}", "score": value} for c in ("quality", "scope")}
    return json.dumps({"user_in_role": {"reasoning": "scripted", "in_role": in_role}, **scores})


def _judged(**low: int) -> tuple[tuple[str, str], ...]:
    """Stand-in replies for the conversation judge: 3 everywhere, 1 at the turns named (turn number -> 1)."""
    rules = [(f"(turn {t} of the conversation)", _score(1)) for t in low.values()]
    return (*rules, ("(turn ", _score(3)))


@pytest.fixture(scope="module")
def answered(spark, warehouse, teacher_server):
    """One question per seed, answered, once for the module; each test continues a copy into conversations."""
    return run_once(warehouse, teacher_server, seeds, questions, responses, change=lambda c: with_overrides(c, ON))


def _conversations(spark, answered, llm_cfg, *settings):
    cfg = copy_schema(spark, answered, with_overrides(llm_cfg, ON + list(settings)))
    pairs = tables.read(spark, where(cfg), responses.TABLE).where("error IS NULL").toPandas()
    return cfg, pairs


def _last_turns(cfg, pairs) -> dict[str, int]:
    c = cfg.conversations
    return {qid: dialogs.last_turn(qid, c.seed, c.turns) for qid in pairs.question_id}


def test_every_conversation_has_its_turns_in_order_and_the_jsonl_trains(spark, answered, llm_cfg, teacher_server):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational

    from lakesynth.training import student

    cfg, pairs = _conversations(spark, answered, llm_cfg)
    teacher_server.reset(replies=_judged())
    result = conversations.run(context(cfg))
    last = _last_turns(cfg, pairs)
    assert set(last.values()) == {2, 3, 4}, "the drawn turns cover the configured range"
    expected = sum(2 * (n - 1) for n in last.values())
    assert result.rows_out == expected and result.errors == 0 and result.metrics["rounds"] == 6
    turns = tables.read(spark, where(cfg), conversations.TABLE).toPandas()
    assert len(turns) == expected and turns.turn_id.is_unique
    for cid, rows in turns.groupby("conversation_id"):
        rows = rows.assign(order=rows.role.map({"user": 0, "assistant": 1})).sort_values(["turn", "order"])
        assert list(zip(rows.turn, rows.role)) == [
            (t, r) for t in range(2, last[cid] + 1) for r in ("user", "assistant")
        ]
        assert rows.content.str.strip().str.len().gt(0).all() and rows.persona.notna().all()
        users = rows[rows.role == "user"]
        assert set(users.kind) <= set(dialogs.KINDS)
        scopes = [bool(pairs.set_index("question_id").in_scope[cid])] + list(users.in_scope)
        for i, kind in enumerate(users.kind):  # pushback only after a message the assistant had to refuse
            assert kind != "pushback" or not scopes[i]
            assert scopes[i + 1] == (False if kind in dialogs.OUT_OF_SCOPE else scopes[0])
        replies = rows[rows.role == "assistant"]
        assert list(replies.kind) == list(users.kind) and list(replies.in_scope) == list(users.in_scope)
    assert teacher_server.stats.completions - teacher_server.stats.probes == expected  # one call a message
    # Each request carries the whole dialog so far: a fourth turn's reply is asked with every message before it.
    longest = next(c for c, n in last.items() if n == 4)
    stored = conversations.stored(
        spark.createDataFrame(pairs[pairs.question_id == longest]), spark.createDataFrame(turns)
    )
    planned = conversations.plan_round(
        stored.toPandas().iloc[0].to_dict(), turn=4, role="assistant", c=cfg.conversations
    )
    (request,) = conversations.prompts(
        pd.DataFrame([planned]), template=cfg.conversations.assistant.template, rules="rules"
    )
    earlier = turns[(turns.conversation_id == longest) & ((turns.turn < 4) | (turns.role == "user"))]
    texts = [*pairs.set_index("question_id").loc[longest, ["question", "answer"]], *earlier.content]
    assert len(texts) == 7 and all(t in request[0]["content"] for t in texts)
    judged = conversation_judge.run(context(cfg))
    assert judged.metrics["conversations_kept"] == len(pairs) and judged.metrics["conversations_truncated"] == 0
    assert judged.metrics["turns_per_conversation"] == {n: list(last.values()).count(n) for n in (2, 3, 4)}
    formatted = chat_format.run(context(cfg))
    examples = tables.read(spark, where(cfg), chat_format.TABLE).toPandas()
    assert len(examples) == len(pairs) and set(examples.example_id.str.endswith(":conversation")) == {True}
    for row in examples.itertuples():
        messages = [{"role": m["role"], "content": m["content"]} for m in row.messages]
        assert chat_violation(messages, 10_000) is None
        assert len(messages) == 1 + 2 * last[row.question_id]  # the system prompt, then every turn
        assert messages[1]["content"] == pairs.set_index("question_id").question[row.question_id]
    data = load_dataset("json", data_files={s: formatted.files[f"{s}_jsonl"] for s in ("train", "val")})
    assert sum(len(d) for d in data.values()) == len(pairs)
    tokenizer = AutoTokenizer.from_pretrained(student.packaged_student(Path(cfg.model_cache).expanduser()))
    longest = max(data["train"], key=lambda e: len(e["messages"]))
    assert len(longest["messages"]) == 9 and is_conversational(longest)
    text = tokenizer.apply_chat_template(longest["messages"], tokenize=False)
    assert text.count("<|im_start|>assistant") == 4 and longest["messages"][-1]["content"] in text
    # A rerun pays for nothing.
    teacher_server.reset()
    again = conversations.run(context(cfg))
    assert again.rows_out == 0 and teacher_server.stats.requests == 0


@pytest.mark.parametrize("on_bad_turn", ["drop", "truncate"])
def test_a_bad_third_turn_drops_or_truncates_exactly_those_conversations(
    spark, answered, llm_cfg, teacher_server, on_bad_turn
):
    cfg, pairs = _conversations(spark, answered, llm_cfg, f"conversations.on_bad_turn={on_bad_turn}")
    teacher_server.reset(replies=_judged(bad=3))
    conversations.run(context(cfg))
    result = conversation_judge.run(context(cfg))
    last = _last_turns(cfg, pairs)
    verdicts = tables.read(spark, where(cfg), conversation_judge.TABLE).toPandas()
    assert set(verdicts[~verdicts.keep].turn) == {3}
    assert (verdicts[~verdicts.keep].drop_reason == "judge:quality").all()
    assert set(verdicts[verdicts.turn == 3].conversation_id) == {c for c, n in last.items() if n >= 3}
    decided = tables.read(spark, where(cfg), conversation_judge.CONVERSATIONS).toPandas().set_index("conversation_id")
    assert set(decided.index) == set(last)
    for cid, n in last.items():
        row = decided.loc[cid]
        if n < 3:
            assert row.keep and row.kept_turns == 2 and row.drop_reason is None and row.truncated_by is None
        elif on_bad_turn == "drop":
            assert not row.keep and row.drop_reason == "judge:quality@turn3" and row.bad_turn == 3
        else:
            assert row.keep and row.kept_turns == 2 and row.truncated_by == "judge:quality@turn3"
    hit = sum(n >= 3 for n in last.values())
    assert result.metrics["bad_turn"] == {3: hit}
    figures = conversation_judge.STAGE.figures(context(cfg), result.metrics)  # what MLflow and the report get
    assert set(figures) == {"conversations/turns_per_conversation.png", "conversations/drops_by_turn.png"}
    heights = [p.get_height() for p in figures["conversations/drops_by_turn.png"].axes[0].patches]
    assert heights == [hit]
    chat_format.run(context(cfg))
    examples = tables.read(spark, where(cfg), chat_format.TABLE).toPandas().set_index("question_id")
    for cid, n in last.items():
        messages = examples.loc[cid].messages
        if n >= 3 and on_bad_turn == "drop":  # the conversation is gone; its pair stays as a single example
            assert len(messages) == 3 and not examples.loc[cid].example_id.endswith(":conversation")
        else:
            assert len(messages) == 1 + 2 * 2


OUT_OF_ROLE = "How can I help you today?"  # what a small teacher playing the customer often writes


@pytest.mark.parametrize("on_bad_turn", ["drop", "truncate"])
def test_a_simulated_user_out_of_role_drops_or_truncates_exactly_its_conversations(
    spark, answered, llm_cfg, teacher_server, on_bad_turn
):
    from pyspark.sql import functions as F

    more = [f"conversations.on_bad_turn={on_bad_turn}", "conversations.turns=[2, 2]"]
    cfg, pairs = _conversations(spark, answered, llm_cfg, *more)
    ids = sorted(pairs.question_id)
    at2, at3 = set(ids[: len(ids) // 3]), set(ids[len(ids) // 3 : 2 * len(ids) // 3])
    assert at2 and at3
    # The stand-in, playing the customer, speaks as the assistant in turn 2 of the conversations `at2`: the request
    # for that message is the only one whose dialog ends on the pair's answer.
    answers = pairs.set_index("question_id").answer
    plant = tuple(
        (f"Assistant: {answers[c]}\n\nWrite the customer's next message", {"message": OUT_OF_ROLE}) for c in at2
    )
    teacher_server.reset(script=plant)
    conversations.run(context(cfg))
    rt = where(cfg)
    turns = tables.read(spark, rt, conversations.TABLE)
    said = {(r.conversation_id, r.turn) for r in turns.where(F.col("content") == OUT_OF_ROLE).collect()}
    assert said == {(c, 2) for c in at2}
    # And in turn 3 of the conversations `at3`, planted in the table.
    users = turns.where((F.col("role") == "user") & (F.col("turn") == 3) & F.col("conversation_id").isin(list(at3)))
    tables.upsert(spark, rt, conversations.TABLE, users.withColumn("content", F.lit(OUT_OF_ROLE)), run_id="planted")
    # The judge finds out of role exactly the user messages that are (its request's dialog ends on one).
    marker = f"Customer: {OUT_OF_ROLE}\n\nThe customer's last message"
    teacher_server.reset(replies=((marker, _score(3, in_role=False)), ("(turn ", _score(3))))
    result = conversation_judge.run(context(cfg))
    verdicts = tables.read(spark, rt, conversation_judge.TABLE).toPandas()
    out = verdicts[~verdicts.keep]
    planted = {(c, 2) for c in at2} | {(c, 3) for c in at3}
    assert set(zip(out.conversation_id, out.turn)) == planted and (~out.user_in_role).all()
    assert (out.drop_reason == "judge:user_out_of_role").all() and out.model.notna().all()
    assert all(json.loads(s)["user_in_role"]["reasoning"] == "scripted" for s in out.scores)  # the verdict is data
    assert verdicts[verdicts.keep].user_in_role.all() and result.metrics["users_out_of_role"] == len(planted)
    kinds = tables.read(spark, rt, conversations.TABLE).where("role = 'user' AND turn = 2").toPandas()
    asked = ["\n".join(m["content"] for m in p) for p in teacher_server.stats.prompts]
    for row in kinds[kinds.conversation_id.isin(at2)].itertuples():  # the judge is told the kind that was drawn
        assert any(marker in a and dialogs.KINDS[row.kind] in a for a in asked)
    decided = tables.read(spark, rt, conversation_judge.CONVERSATIONS).toPandas().set_index("conversation_id")
    for cid in ids:
        row = decided.loc[cid]
        if cid in at2:  # nothing before turn 2 to keep: dropped either way
            assert not row.keep and row.drop_reason == "judge:user_out_of_role@turn2" and row.bad_turn == 2
        elif cid in at3 and on_bad_turn == "drop":
            assert not row.keep and row.drop_reason == "judge:user_out_of_role@turn3" and row.bad_turn == 3
        elif cid in at3:
            assert row.keep and row.kept_turns == 2 and row.truncated_by == "judge:user_out_of_role@turn3"
        else:
            assert row.keep and row.kept_turns == 3 and pd.isna(row.bad_turn) and row.truncated_by is None


def test_a_turn_that_copies_an_earlier_message_fails_by_rule_before_any_judge_is_paid(
    spark, answered, llm_cfg, teacher_server
):
    from pyspark.sql import functions as F

    cfg, pairs = _conversations(spark, answered, llm_cfg, "conversations.turns=[2, 2]")
    ids = sorted(pairs.question_id)
    users_copy, replies_copy = set(ids[: len(ids) // 3]), set(ids[len(ids) // 3 : 2 * len(ids) // 3])
    teacher_server.reset(script=())
    conversations.run(context(cfg))
    rt = where(cfg)
    turns = tables.read(spark, rt, conversations.TABLE)
    # Planted as the 0.5B teacher writes them: the customer pastes the pair's answer back (turn 2), and the assistant
    # answers turn 3 with the customer's own message of turn 3, a few words changed.
    answers = pairs.set_index("question_id").answer
    asked = {r.conversation_id: r.content for r in turns.where("role = 'user' AND turn = 3").collect()}
    planted = [(c, 2, "user", answers[c]) for c in users_copy] + [
        (c, 3, "assistant", f"Well, {asked[c]} Thanks.") for c in replies_copy
    ]
    for cid, turn, role, content in planted:
        row = turns.where((F.col("conversation_id") == cid) & (F.col("turn") == turn) & (F.col("role") == role))
        tables.upsert(spark, rt, conversations.TABLE, row.withColumn("content", F.lit(content)), run_id="planted")
    teacher_server.reset(replies=(("(turn ", _score(3)),))
    result = conversation_judge.run(context(cfg))
    verdicts = tables.read(spark, rt, conversation_judge.TABLE).toPandas()
    out = verdicts[~verdicts.keep].set_index("conversation_id")
    assert {(c, t) for c, t in zip(out.index, out.turn)} == {(c, 2) for c in users_copy} | {
        (c, 3) for c in replies_copy
    }
    assert result.metrics["copied_turns"] == len(out) and (out.model == "rule:copy").all()
    assert result.metrics["kept"] == len(verdicts) - len(out)
    for cid in users_copy:  # the verdict is data: its reasoning names what was copied
        assert out.drop_reason[cid] == "copy:user"
        assert json.loads(out.scores[cid])["copy"]["reasoning"].startswith("the customer's message (turn 2) copies")
    for cid in replies_copy:
        assert out.drop_reason[cid] == "copy:assistant" and "of the customer's turn 3" in out.scores[cid]
    # No judge request for a copied turn: the stand-in was asked only about the others.
    judged = ["\n".join(m["content"] for m in p) for p in teacher_server.stats.prompts]
    assert teacher_server.stats.completions - teacher_server.stats.probes == len(verdicts) - len(out)
    assert not any(f"Customer: {answers[c]}\n\nThe customer's last message" in a for c in users_copy for a in judged)
    decided = tables.read(spark, rt, conversation_judge.CONVERSATIONS).toPandas().set_index("conversation_id")
    for cid in ids:
        row = decided.loc[cid]
        if cid in users_copy:
            assert not row.keep and row.drop_reason == "copy:user@turn2"
        elif cid in replies_copy:
            assert not row.keep and row.drop_reason == "copy:assistant@turn3"
        else:  # the stand-in's own messages (alike in their template) are no copies
            assert row.keep and row.kept_turns == 3


def test_a_conversation_ends_at_a_user_message_that_copies_and_is_dropped_there(
    spark, answered, llm_cfg, teacher_server
):
    """The simulated user pastes the pair's answer back in turn 2: no reply and no later turn is asked for (the dialog
    is lost there), and conversation_judge drops it as copy:user@turn2 without a judge request for it."""
    cfg, pairs = _conversations(spark, answered, llm_cfg, "conversations.turns=[2, 2]")
    ids = sorted(pairs.question_id)
    pasted = set(ids[: len(ids) // 2])
    answers = pairs.set_index("question_id").answer
    plant = tuple(
        (f"Assistant: {answers[c]}\n\nWrite the customer's next message", {"message": answers[c]}) for c in pasted
    )
    teacher_server.reset(script=plant)
    conversations.run(context(cfg))
    assert teacher_server.stats.completions - teacher_server.stats.probes == 4 * len(ids) - 3 * len(pasted)
    rt = where(cfg)
    turns = tables.read(spark, rt, conversations.TABLE).toPandas()
    stored = turns.groupby("conversation_id").turn_id.count()
    assert all(stored[c] == (1 if c in pasted else 4) for c in ids)
    teacher_server.reset(replies=(("(turn ", _score(3)),))
    conversation_judge.run(context(cfg))
    decided = tables.read(spark, rt, conversation_judge.CONVERSATIONS).toPandas().set_index("conversation_id")
    for cid in ids:
        row = decided.loc[cid]
        if cid in pasted:
            assert not row.keep and row.drop_reason == "copy:user@turn2" and row.bad_turn == 2
        else:
            assert row.keep and row.kept_turns == 3
    judged = tables.read(spark, rt, conversation_judge.TABLE).toPandas()
    assert set(judged.conversation_id).isdisjoint(pasted)  # nothing of theirs judged, by rule or by the judge


def test_an_assistant_turn_that_is_only_a_preamble_fails_by_rule_as_incomplete(
    spark, answered, llm_cfg, teacher_server
):
    """The pair's incomplete check holds for every assistant turn: a reply that is only a preamble (the telecom run's
    kept "Certainly. Here are the steps and facts to help you with this question.") fails its turn unjudged."""
    from pyspark.sql import functions as F

    cfg, pairs = _conversations(spark, answered, llm_cfg, "conversations.turns=[1, 1]")
    teacher_server.reset(script=())
    conversations.run(context(cfg))
    rt = where(cfg)
    ids = sorted(pairs.question_id)
    cut = set(ids[: len(ids) // 2])
    preamble = "Certainly. Here are the steps and facts to help you with this question."
    replies = tables.read(spark, rt, conversations.TABLE).where(
        (F.col("role") == "assistant") & F.col("conversation_id").isin(sorted(cut))
    )
    tables.upsert(spark, rt, conversations.TABLE, replies.withColumn("content", F.lit(preamble)), run_id="planted")
    teacher_server.reset(replies=(("(turn ", _score(3)),))
    conversation_judge.run(context(cfg))
    verdicts = tables.read(spark, rt, conversation_judge.TABLE).toPandas().set_index("conversation_id")
    out = verdicts[~verdicts.keep]
    assert set(out.index) == cut and (out.drop_reason == "incomplete").all() and (out.model == "rule:incomplete").all()
    assert all("only a preamble" in json.loads(s)["incomplete"]["reasoning"] for s in out.scores)
    assert teacher_server.stats.completions - teacher_server.stats.probes == len(ids) - len(cut)
    decided = tables.read(spark, rt, conversation_judge.CONVERSATIONS).toPandas().set_index("conversation_id")
    assert {c for c in ids if not decided.keep[c]} == cut
    assert set(decided.drop_reason.dropna()) == {"incomplete@turn2"}


def test_share_mixes_single_turn_examples_and_conversations(spark, answered, llm_cfg, teacher_server):
    cfg, pairs = _conversations(spark, answered, llm_cfg, "conversations.share=0.5", "conversations.turns=[1, 1]")
    teacher_server.reset(replies=_judged())
    conversations.run(context(cfg))
    conversation_judge.run(context(cfg))
    chat_format.run(context(cfg))
    examples = tables.read(spark, where(cfg), chat_format.TABLE).toPandas()
    dialogs_in = examples.example_id.str.endswith(":conversation")
    assert examples.question_id.is_unique and len(examples) == len(pairs)  # never a pair and its conversation
    drawn = {q for q in pairs.question_id if dialogs.draw(cfg.conversations.seed, "share", q) < 0.5}
    assert set(examples[dialogs_in].question_id) == drawn and 0 < len(drawn) < len(pairs)


def _table(tmp_path, name):
    path = tmp_path / "wh" / "main" / "lakesynth_dev" / name
    return deltalake.DeltaTable(str(path)).to_pandas()


def test_sigkill_mid_stage_then_rerun_repays_only_in_flight_and_leaves_no_gap(tmp_path, teacher_server):
    settings = [f"--set={s}" for s in ON]
    args = [
        "--warehouse",
        str(tmp_path / "wh"),
        *settings,
        "--set",
        f"endpoints.teacher.base_url={teacher_server.base_url}",
    ]
    args += ["--set", "endpoints.teacher.model=standin"]
    teacher_server.reset()
    assert lakesynth("run", "--stages", "seed,questions,responses", *args).returncode == 0
    pairs = _table(tmp_path, "synthetic_responses")
    cfg = registry.load_config(ROOT / "conf" / "lakesynth.yml", ON)
    last = _last_turns(cfg, pairs)
    total = sum(2 * (n - 1) for n in last.values())
    concurrency = 4
    teacher_server.reset(latency_ms=40)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakesynth.cli", "conversations", *args, "--set", "mlflow.enabled=false"]
        + ["--set", f"endpoints.teacher.max_concurrency={concurrency}", "--set", "llm.journal_flush_s=0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while teacher_server.stats.completions < total * 0.6 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = teacher_server.stats.as_dict()
    stored = _table(tmp_path, "conversation_turns")
    assert 0 < len(stored) < total, "the kill must land after a round was stored and before the last"
    teacher_server.reset()
    rerun = lakesynth("conversations", *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    paid = killed["requests"] - killed["probes"] + teacher_server.stats.requests - teacher_server.stats.probes
    assert 0 <= paid - total <= concurrency  # only what was in flight at the kill is paid twice
    rows = _table(tmp_path, "conversation_turns")
    assert len(rows) == total and rows.turn_id.is_unique and rows.error.isna().all()
    for cid, group in rows.groupby("conversation_id"):
        got = sorted(zip(group.turn, group.role.map({"user": 0, "assistant": 1})))
        assert got == [(t, r) for t in range(2, last[cid] + 1) for r in (0, 1)]  # no gap, no duplicate
    before = stored.set_index("turn_id").fingerprint
    assert (rows.set_index("turn_id").fingerprint[before.index] == before).all()  # stored turns were not redone
