"""Multi-turn tool dialogs in APIGen-MT's order: blueprints validated in the sandbox, a simulated user and the
assistant turn by turn (each turn a row, resumable), and the replay that keeps a dialog only when its calls reach the
blueprint's results."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from conftest import context, where

from lakesynth.core import tables
from lakesynth.tools import dialogs, tool_format
from lakesynth.tools import tools as tools_stage

SAVINGS = {"name": "get_balance", "arguments": {"account": "savings"}}
CHECKING = {"name": "get_balance", "arguments": {"account": "checking"}}


def _on(cfg, **dialog):
    t = cfg.tools
    return cfg.model_copy(
        update={
            "tools": t.model_copy(
                update={
                    "dialogs": t.dialogs.model_copy(update={"enabled": True, **dialog}),
                    "output": t.output.model_copy(update={"style": "openai"}),
                }
            )
        }
    )


def _plant_blueprint(spark, cfg, blueprint_id: str, blueprint: list, goal: str = "Know my savings balance.") -> None:
    """A blueprint, validated by the stage."""
    row = dict.fromkeys(dialogs.BLUEPRINTS.row_names)
    row.update(blueprint_id=blueprint_id, goal=goal, calls=json.dumps(blueprint), model="planted")
    frame = spark.createDataFrame([row], dialogs.BLUEPRINTS.row_schema)
    tables.upsert(spark, where(cfg), dialogs.BLUEPRINTS, frame, run_id="p")


def _plant(spark, cfg, blueprint_id: str, blueprint: list, made: list) -> None:
    """A blueprint (validated by the stage) and a finished dialog whose assistant calls `made` (run by the stage)."""
    rt = where(cfg)
    _plant_blueprint(spark, cfg, blueprint_id, blueprint)
    said = [
        ("user", "What is in my savings?", None, False),
        ("assistant", None, json.dumps(made), False),
        ("assistant", "Your savings hold 8,200.00 EUR.", None, False),
        ("user", "Thanks, that is all.", None, True),
    ]
    turns = []
    for n, (role, content, calls, done) in enumerate(said):
        turn = dict.fromkeys(dialogs.TURNS.row_names)
        turn.update(turn_id=f"{blueprint_id}:{n}", blueprint_id=blueprint_id, turn=n, role=role, content=content)
        turn.update(calls=calls, done=done, model="planted")
        turns.append(turn)
    tables.upsert(spark, rt, dialogs.TURNS, spark.createDataFrame(turns, dialogs.TURNS.row_schema), run_id="p")


def test_dialogs_are_kept_only_when_their_calls_reach_the_blueprints_results(spark, llm_cfg, teacher_server):
    from lakesynth.tools import sandbox

    cfg = _on(llm_cfg, count=3, max_turns=5)
    rt = where(cfg)
    teacher_server.reset(no_digits=True)
    tools_stage.STAGE.run(context(cfg))
    _plant(spark, cfg, "planted-same", [SAVINGS], [SAVINGS])
    _plant(spark, cfg, "planted-diverged", [SAVINGS], [CHECKING])
    result = dialogs.STAGE.run(context(cfg))
    verdicts = {r.blueprint_id: r for r in tables.read(spark, rt, dialogs.TABLE).collect()}
    assert verdicts["planted-same"].keep and verdicts["planted-same"].drop_reason is None
    diverged = verdicts["planted-diverged"]
    assert not diverged.keep and diverged.drop_reason == 'diverged:get_balance({"account": "savings"})'
    blueprints = tables.read(spark, rt, dialogs.BLUEPRINTS).collect()
    assert {b.blueprint_id for b in blueprints} >= {"bp-1", "bp-2", "bp-3"}
    assert all(b.keep is not None for b in blueprints)  # every blueprint validated: run, or dropped with why
    assert all(b.drop_reason for b in blueprints if not b.keep)
    kept = {b.blueprint_id for b in blueprints if b.keep}
    assert set(verdicts) <= kept and result.metrics["kept"] + sum(result.metrics["dropped"].values()) == len(verdicts)

    # Every dialog's turns: numbered from 0 without a gap, the user first, the assistant after the user and after its
    # own calls' results, the user after the assistant's reply; every call's results what the sandbox returns for it.
    turns = tables.read(spark, rt, dialogs.TURNS).orderBy("blueprint_id", "turn").collect()
    by: dict[str, list] = {}
    for t in turns:
        by.setdefault(t.blueprint_id, []).append(t)
    assert set(by) == kept
    module = spark.table(rt.fqn("tools")).where("module IS NOT NULL").first().module
    with sandbox.Sandbox(module, workers=1, timeout_s=5, memory_mb=512) as box:
        for dialog in by.values():
            assert [t.turn for t in dialog] == list(range(len(dialog))) and dialog[0].role == "user"
            for before, t in itertools.pairwise(dialog):
                assert t.role == ("user" if before.role == "assistant" and not before.calls else "assistant")
            for t in dialog:
                if t.calls:
                    assert json.loads(t.results) == dialogs.run_calls(box, json.loads(t.calls))

    # A rerun asks nothing; a lost turn (a crash) is asked again, and only it.
    teacher_server.reset(no_digits=True)
    dialogs.STAGE.run(context(cfg))
    assert teacher_server.stats.requests == 0
    longest = max((d for d in by.values() if d[0].model != "planted"), key=len)
    lost = longest[-1].turn_id
    tables.delete_absent(
        spark,
        rt,
        dialogs.TURNS,
        "turn_id",
        spark.createDataFrame([(t.turn_id,) for t in turns if t.turn_id != lost], "turn_id string"),
    )
    dialogs.STAGE.run(context(cfg.model_copy(update={"run_id": "rerun"})))
    again = {t.turn_id: t for t in tables.read(spark, rt, dialogs.TURNS).collect()}
    assert teacher_server.stats.requests == 2  # the one-token preflight, then the lost turn
    assert again[lost].content == longest[-1].content and again[lost].calls == longest[-1].calls
    assert set(again) == {t.turn_id for t in turns}  # no gap, no duplicate
    assert {i for i, t in again.items() if t.run_id == "rerun"} == {lost}


def test_a_kept_dialog_is_a_training_example_with_its_tool_messages(spark, llm_cfg, teacher_server):
    from trl.data_utils import is_conversational

    cfg = _on(llm_cfg, count=1, max_turns=2)
    teacher_server.reset(no_digits=True)
    tools_stage.STAGE.run(context(cfg))
    _plant(spark, cfg, "planted-same", [SAVINGS], [SAVINGS])
    dialogs.STAGE.run(context(cfg))
    for style in ("openai", "json_content"):
        styled = cfg.model_copy(
            update={
                "tools": cfg.tools.model_copy(update={"output": cfg.tools.output.model_copy(update={"style": style})})
            }
        )
        result = tool_format.STAGE.run(context(styled))
        rows = tables.read(spark, where(cfg), tool_format.TABLE).where("category = 'dialog'").collect()
        lines = [
            json.loads(line)
            for key in ("tools_train_jsonl", "tools_val_jsonl")
            for line in Path(result.files[key]).read_text(encoding="utf-8").splitlines()
        ]
        (line,) = [x for x in lines if x["messages"][-1]["content"] == "Your savings hold 8,200.00 EUR."]
        assert any(r.example_id == "planted-same" for r in rows) and is_conversational(line)
        roles = [m["role"] for m in line["messages"]]
        if style == "openai":
            assert roles == ["user", "assistant", "tool", "assistant"]
            call = line["messages"][1]["tool_calls"][0]
            assert line["messages"][2]["tool_call_id"] == call["id"]
            assert json.loads(line["messages"][2]["content"]) == {
                "account": "savings",
                "balance": 8200.0,
                "currency": "EUR",
            }
        else:
            assert roles == ["system", "user", "assistant", "user", "assistant"]
            assert json.loads(line["messages"][2]["content"]) == [SAVINGS]
            assert line["messages"][3]["content"].startswith("Tool results:")


def test_the_simulated_user_writes_as_the_persona_drawn_for_its_dialog(spark, llm_cfg, teacher_server):
    roles, tones = ["a retired teacher", "a small-business owner"], ["terse", "worried"]
    cfg = _on(llm_cfg, count=1, max_turns=2)
    g = cfg.tools.generation
    personas = g.personas.model_copy(update={"roles": roles, "tones": tones})
    cfg = cfg.model_copy(
        update={"tools": cfg.tools.model_copy(update={"generation": g.model_copy(update={"personas": personas})})}
    )
    teacher_server.reset(no_digits=True, script=(("You play a user", {"done": False}),))
    tools_stage.STAGE.run(context(cfg))
    for n in range(6):
        _plant_blueprint(spark, cfg, f"planted-{n}", [SAVINGS], goal=f"Know my savings balance, task {n}.")
    dialogs.STAGE.run(context(cfg))
    rt = where(cfg)
    turns = tables.read(spark, rt, dialogs.TURNS).collect()
    assert {t.role for t in turns} == {"user", "assistant"} and len({t.blueprint_id for t in turns}) >= 6
    goals = {b.blueprint_id: b.goal for b in tables.read(spark, rt, dialogs.BLUEPRINTS).collect()}
    asked = {p[0]["content"] for p in teacher_server.stats.prompts if p[0]["content"].startswith("You play a user")}
    for t in turns:  # the dialog's own draw, on every turn of it, and in the request of each of its user turns
        who = json.loads(t.persona)
        assert t.persona == dialogs.persona(t.blueprint_id, cfg.tools.dialogs.seed, personas.all())
        assert who["role"] in roles and who["tone"] in tones
        if t.role == "user":
            (request,) = [p for p in asked if goals[t.blueprint_id] in p]
            assert f"You are {who['role']}, writing in a {who['tone']} tone." in request
    verdicts = tables.read(spark, rt, dialogs.TABLE).collect()
    by_dialog = {t.blueprint_id: t.persona for t in turns}
    assert verdicts and all(v.persona == by_dialog[v.blueprint_id] for v in verdicts)
    assert len(set(by_dialog.values())) > 1  # drawn per dialog, not one for all
