"""Multi-step tool trajectories: the sandbox's results as `tool` messages, the teacher's final answer, the deterministic
check for invented values, and the training files each style writes (read back with TRL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import context, copy_schema, on_standin, sample_config, where
from test_tool_training import _gguf_string

from lakesynth.core import tables
from lakesynth.tools import (
    answer_check,
    call_execution,
    call_format,
    call_semantic,
    call_verdicts,
    calls,
    steps,
    tool_format,
    trajectories,
)
from lakesynth.tools import tools as tools_stage

STAGES = (tools_stage, calls, call_format, call_execution, trajectories, call_semantic, call_verdicts)


def _traj(cfg, *, style: str = "json_content", semantic: bool = False):
    t = cfg.tools
    return cfg.model_copy(
        update={
            "tools": t.model_copy(
                update={
                    "seeds": "",  # the sample's calls.jsonl only: no generation
                    "trajectories": t.trajectories.model_copy(update={"enabled": True}),
                    "semantic": t.semantic.model_copy(update={"enabled": semantic}),
                    "output": t.output.model_copy(update={"style": style}),
                }
            )
        }
    )


@pytest.fixture(scope="module")
def finished(spark, warehouse, teacher_server):
    """The sample's calls through the checks and trajectories, once for the module, on a stand-in whose text states
    no number (its digests spelled in letters), so its answers invent nothing; tests change copies."""
    cfg = _traj(on_standin(sample_config(warehouse), teacher_server))
    teacher_server.reset(no_digits=True)
    for stage in STAGES:
        stage.STAGE.execute(context(cfg))
    return cfg


def _lines(result) -> list[dict]:
    return [
        json.loads(line)
        for key in ("tools_train_jsonl", "tools_val_jsonl")
        for line in Path(result.files[key]).read_text(encoding="utf-8").splitlines()
    ]


def _styled(cfg, style: str):
    return cfg.model_copy(
        update={"tools": cfg.tools.model_copy(update={"output": cfg.tools.output.model_copy(update={"style": style})})}
    )


def test_every_tool_message_is_what_the_sandbox_returned_for_its_call(spark, finished, llm_cfg):
    from lakesynth.tools import sandbox

    cfg = copy_schema(spark, finished, _traj(llm_cfg))
    answers = tables.read(spark, where(cfg), trajectories.TABLE).collect()
    assert {a.source_id for a in answers} == {"ok-balance", "ok-parallel", "ok-openai"}  # every pair with calls
    assert all(a.keep and a.error is None and a.answer for a in answers)
    result = tool_format.STAGE.run(context(_styled(cfg, "openai")))
    lines = [x for x in _lines(result) if any(m["role"] == "tool" for m in x["messages"])]
    assert len(lines) == 3
    module = spark.table(where(cfg).fqn("tools")).where("module IS NOT NULL").first().module
    with sandbox.Sandbox(module, workers=1, timeout_s=5, memory_mb=512) as box:
        for line in lines:
            messages = line["messages"]
            assert [m["role"] for m in messages][-2:] == ["tool", "assistant"]
            called = {c["id"]: c["function"] for m in messages if m.get("tool_calls") for c in m["tool_calls"]}
            results = [m for m in messages if m["role"] == "tool"]
            assert [m["tool_call_id"] for m in results] == list(called)  # one result per call, in order
            outcomes = box.run(
                [
                    (called[m["tool_call_id"]]["name"], json.loads(called[m["tool_call_id"]]["arguments"]))
                    for m in results
                ]
            )
            for message, outcome in zip(results, outcomes):
                assert outcome.ok and json.loads(message["content"]) == json.loads(outcome.result)
            answer = next(a.answer for a in answers if a.query == messages[0]["content"])
            assert messages[-1]["content"] == answer


def test_an_answer_with_an_invented_amount_is_dropped_naming_it(spark, finished, llm_cfg, teacher_server):
    cfg = copy_schema(spark, finished, _traj(llm_cfg))
    rt = where(cfg)
    row = tables.read(spark, rt, trajectories.TABLE).where("source_id = 'ok-balance'").first().asDict()
    assert json.loads(row["results"])[0]["result"]["balance"] == 8200.0
    planted = "Your savings account holds 8,200.00 EUR, and 1,999.00 EUR more arrives on 2026-12-24."
    row.update(answer=planted, keep=True, drop_reason=None)
    frame = spark.createDataFrame([{k: row[k] for k in trajectories.TABLE.row_names}], trajectories.TABLE.row_schema)
    tables.upsert(spark, rt, trajectories.TABLE, frame, run_id="planted")
    teacher_server.reset(no_digits=True)
    result = trajectories.STAGE.run(context(cfg))
    assert teacher_server.stats.requests == 0 and result.metrics["rechecked"] == 1  # checked again, no call paid
    dropped = tables.read(spark, rt, trajectories.TABLE).where("source_id = 'ok-balance'").first()
    assert not dropped.keep and dropped.drop_reason == "invented:1,999.00"
    assert json.loads(dropped.invented) == ["1,999.00", "2026-12-24"]
    assert result.metrics["success_rate"] == round(2 / 3, 3)
    (figure,) = trajectories.STAGE.figures(context(cfg), result.metrics).values()  # MLflow's figure of the stage
    assert [p.get_height() for p in figure.axes[0].patches] == [2, 1] and "67% kept" in figure.axes[0].get_title()
    call_verdicts.STAGE.run(context(cfg))
    verdict = spark.table(rt.fqn("call_verdicts")).where("source_id = 'ok-balance'").first()
    assert not verdict.keep and verdict.drop_reason == "invented:1,999.00" and verdict.answer == planted
    examples = tool_format.STAGE.run(context(cfg))
    assert all("1,999.00" not in json.dumps(x) for x in _lines(examples))


@pytest.mark.parametrize(
    "planted, reason",
    [
        (None, "echo"),  # the request itself, as the 0.5B teacher wrote for "I lost my card ending 4821 ..."
        ("To see it, call the `get_balance` tool with account savings.", "tool_text:get_balance"),
        ("get_balance({", "tool_text:get_balance"),
        ("Your savings account holds 8,200.00 EUR.", None),  # a control: an answer from the result
    ],
)
def test_an_answer_that_repeats_the_request_or_writes_out_a_call_is_dropped(
    spark, finished, llm_cfg, teacher_server, planted, reason
):
    cfg = copy_schema(spark, finished, _traj(llm_cfg))
    rt = where(cfg)
    row = tables.read(spark, rt, trajectories.TABLE).where("source_id = 'ok-balance'").first().asDict()
    row.update(answer=planted or f" {row['query'].upper()} ", keep=True, drop_reason=None)
    frame = spark.createDataFrame([{k: row[k] for k in trajectories.TABLE.row_names}], trajectories.TABLE.row_schema)
    tables.upsert(spark, rt, trajectories.TABLE, frame, run_id="planted")
    teacher_server.reset(no_digits=True)
    trajectories.STAGE.run(context(cfg))
    checked = tables.read(spark, rt, trajectories.TABLE).where("source_id = 'ok-balance'").first()
    assert checked.keep is (reason is None) and checked.drop_reason == reason
    assert teacher_server.stats.requests == 0  # checked again, no call paid


@pytest.mark.parametrize(
    "answer, invented",
    [
        ("Checking holds $1,520.40 and savings €8,200.", []),
        ("Together they hold 9,720.40 EUR.", []),  # a total over the parallel calls
        ("Checking holds $1,250.40.", ["$1,250.40"]),
        ("Both accounts (2 of them) are open; reference TX-77.", ["TX-77"]),
        ("The balance rounds to 1,520 EUR at a rate of 3.5%.", []),  # a rate of 0.035
        ("Checking holds 15.2% of 10,000.", ["15.2%"]),  # a ratio worked out is not in the results
        ("Done on 12/24/2026.", ["12/24/2026"]),
    ],
)
def test_the_value_check_reads_amounts_dates_and_identifiers(answer, invented):
    results = [{"account": "checking", "balance": 1520.4, "rate": 0.035}, {"account": "savings", "balance": 8200.0}]
    assert answer_check.invented(answer, "What do checking and savings hold of 10,000?", results) == invented


def test_openai_and_hf_files_pass_trls_format_checks(spark, finished, llm_cfg):
    from datasets import load_dataset
    from tokenizers import Tokenizer, models
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from trl.data_utils import apply_chat_template, is_conversational

    from lakesynth.llm import embedded
    from lakesynth.training import student

    cfg = copy_schema(spark, finished, _traj(llm_cfg))
    qwen = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        chat_template=_gguf_string(
            embedded.packaged_model(Path(cfg.model_cache).expanduser()), "tokenizer.chat_template"
        ),
    )
    for style in ("openai", "hf"):
        result = tool_format.STAGE.run(context(_styled(cfg, style)))
        loaded = load_dataset("json", data_files=result.files["tools_train_jsonl"], split="train")
        assert len(loaded) and is_conversational(loaded[0])
        for line in _lines(result):
            assert is_conversational(line)
            text = apply_chat_template(line, qwen, tools=line["tools"])["text"]  # as SFTTrainer renders a row
            assert "<tools>" in text
            for m in line["messages"]:
                if m["role"] == "tool":  # each result rendered as the tool's response
                    assert f"<tool_response>\n{m['content']}\n</tool_response>" in text
    # The packaged student's own template renders no tools or tool calls: it learns trajectories from json_content,
    # the calls and the results in text.
    smol = AutoTokenizer.from_pretrained(student.packaged_student(Path(cfg.model_cache).expanduser()))
    flat = [x for x in _lines(tool_format.STAGE.run(context(cfg))) if len(x["messages"]) == 5]
    assert len(flat) == 3
    for line in flat:
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert line["messages"][3]["content"].startswith(steps.RESULTS)
        assert "Tool results:" in line["messages"][0]["content"]
        text = apply_chat_template(line, smol)["text"]
        assert text.count("<|im_start|>assistant") == 2


def test_trajectories_are_off_by_default(llm_cfg):
    assert trajectories.STAGE.execute(context(llm_cfg)).metrics == {"disabled": "tools.trajectories.enabled is false"}


def test_tool_export_carries_the_trajectories_and_dialogs_as_the_openai_training_files_do(
    spark, finished, llm_cfg, teacher_server
):
    import datasets
    import yaml
    from test_dialogs import SAVINGS, _plant
    from trl.data_utils import is_conversational

    from lakesynth.tools import dialogs, tool_export

    base = copy_schema(spark, finished, _traj(llm_cfg))
    t = base.tools
    on = t.model_copy(update={"dialogs": t.dialogs.model_copy(update={"enabled": True, "count": 1, "max_turns": 2})})
    export = base.export.model_copy(update={"enabled": True, "token_env": "LAKESYNTH_TEST_NO_SUCH_TOKEN"})
    cfg = base.model_copy(update={"tools": on, "export": export})
    teacher_server.reset(no_digits=True)
    _plant(spark, cfg, "planted-same", [SAVINGS], [SAVINGS])
    dialogs.STAGE.run(context(cfg))
    # What the openai training files carry, per example; then the export, with the training files in json_content.
    tool_format.STAGE.run(context(_styled(cfg, "openai")))
    table = tables.read(spark, where(cfg), tool_format.TABLE).collect()
    trained = {r.example_id: [m.asDict(recursive=True) for m in r.messages] for r in table}
    tool_format.STAGE.run(context(cfg))
    result = tool_export.STAGE.run(context(cfg))
    folder = result.files["export"]
    multi = datasets.load_from_disk(f"{folder}/multi_step")
    rows = {r["example_id"]: (split, r) for split, d in multi.items() for r in d}
    answered = {a.call_id for a in tables.read(spark, where(cfg), trajectories.TABLE).collect() if a.keep}
    dialog_ids = {r.example_id for r in table if r.category == "dialog"}
    assert "planted-same" in dialog_ids and len(answered) == 3
    assert set(rows) == answered | dialog_ids  # every kept trajectory and dialog, once
    specs = [json.loads(r.spec) for r in spark.table(where(cfg).fqn("tools")).orderBy("name").collect()]
    split_of = {r.example_id: r.split for r in tables.read(spark, where(cfg), tool_format.TABLE).collect()}
    for example_id, (split, row) in rows.items():
        assert split == split_of[example_id]  # the training files' split
        assert row["kind"] == ("dialog" if example_id in dialog_ids else "trajectory")
        assert row["messages"] == trained[example_id] and is_conversational(row)  # as the openai files carry it
        assert any(m["role"] == "tool" and m["tool_call_id"] for m in row["messages"])
        assert json.loads(row["tools"]) == specs  # the OpenAI tools list
    planted = rows["planted-same"][1]["messages"]
    assert [m["role"] for m in planted] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(planted[2]["content"]) == {"account": "savings", "balance": 8200.0, "currency": "EUR"}
    xlam = datasets.load_from_disk(f"{folder}/tools")
    assert "planted-same" not in {r["example_id"] for d in xlam.values() for r in d}  # a dialog has no xlam row
    card = Path(folder, "README.md").read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["tools", "multi_step"]
    for config in meta["configs"]:
        for entry in config["data_files"]:
            assert Path(folder, entry["path"]).is_file()
    assert "config `multi_step`" in card and "(dialog: 1, trajectory: 3)" in card
    assert sum(v for k, v in result.metrics.items() if k.endswith("_multi_step")) == len(rows)
