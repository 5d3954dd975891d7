"""The function-calling job's training data and its proof: kept calls as tool-calling examples in each style
(read back as OpenAI's, Databricks' and TRL's formats), and the BFCL AST check that scores a student's calls."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import pytest
from conftest import ROOT, copy_schema, sample_config, where

from lakesynth import pipeline
from lakesynth.core import tables
from lakesynth.tools import ast_match, tool_format

TOOLS = {
    "get_balance": {"type": "object", "properties": {"account": {"type": "string"}}, "required": ["account"]},
    "list_transactions": {
        "type": "object",
        "properties": {"account": {"type": "string"}, "limit": {"type": "integer", "default": 10}},
        "required": ["account"],
    },
    "convert": {"type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}}},
}


def _styled(cfg, style: str):
    no_judge = cfg.tools.semantic.model_copy(update={"enabled": False})
    output = cfg.tools.output.model_copy(update={"style": style})
    tools_cfg = cfg.tools.model_copy(update={"semantic": no_judge, "output": output})
    return cfg.model_copy(update={"tools": tools_cfg})


@pytest.fixture(scope="module")
def checked(spark, warehouse):
    """The sample's calls through every check (the semantic one off), once for the module; tests format copies."""
    cfg = _styled(sample_config(warehouse), "json_content")
    stages = ["tools", "calls", "call_format", "call_execution", "call_semantic", "call_verdicts"]
    pipeline.run(cfg, stages, job="lakesynth_tools", root=ROOT)
    return cfg


def _run(spark, checked, cfg, style: str) -> dict:
    copy_schema(spark, checked, cfg)
    return pipeline.run(_styled(cfg, style), ["tool_format"], job="lakesynth_tools", root=ROOT)


def _lines(summary: dict) -> list[dict]:
    return [
        json.loads(line)
        for key in ("tools_train_jsonl", "tools_val_jsonl")
        for line in Path(summary["files"][key]).read_text(encoding="utf-8").splitlines()
    ]


def test_json_content_examples_are_what_databricks_fine_tuning_reads(spark, checked, cfg):
    summary = _run(spark, checked, cfg, "json_content")
    assert summary["stages"]["tool_format"]["status"] == "ok", summary["stages"]["tool_format"]
    rows = tables.read(spark, where(cfg), tool_format.TABLE).collect()
    assert {r.example_id for r in rows} == {
        r.call_id for r in spark.table(where(cfg).fqn("call_verdicts")).where("keep").collect()
    }
    categories = {r.source_id: r.category for r in rows}
    assert categories == {
        "ok-balance": "simple",
        "ok-parallel": "parallel",
        "ok-openai": "simple",
        "ok-irrelevant": "irrelevance",
    }
    lines = _lines(summary)
    assert len(lines) == 4
    for line in lines:
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["system", "user", "assistant"] and set(line) == {"messages"}  # FM takes these roles only
        assert '"name": "get_balance"' in line["messages"][0]["content"]  # the system prompt lists the tools
        assert isinstance(ast_match.parse_reply(line["messages"][2]["content"]), list)
    irrelevant = next(x for x in lines if x["messages"][1]["content"] == "Should I buy gold or bitcoin?")
    assert irrelevant["messages"][2]["content"] == "[]"


@pytest.mark.parametrize("style", ["openai", "hf"])
def test_tool_call_styles_for_openai_and_trl(spark, checked, cfg, style):
    summary = _run(spark, checked, cfg, style)
    lines = _lines(summary)
    parallel = next(x for x in lines if x["messages"][0]["content"] == "What are my checking and savings balances?")
    calls = parallel["messages"][1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_balance", "get_balance"]
    arguments = calls[0]["function"]["arguments"]
    if style == "openai":  # OpenAI fine-tuning: arguments as a JSON string, the tools on the line
        assert json.loads(arguments) == {"account": "checking"}
        assert parallel["tools"][0]["type"] == "function"
    else:  # TRL / HF chat templates: arguments as a dict, tools as JSON schemas
        assert arguments == {"account": "checking"}
        assert {t["name"] for t in parallel["tools"]} >= {"get_balance", "transfer_money"}
    irrelevant = next(x for x in lines if x["messages"][0]["content"] == "Should I buy gold or bitcoin?")
    assert "tool_calls" not in irrelevant["messages"][1] and irrelevant["messages"][1]["content"]


def test_a_spec_and_seeds_without_implementations_make_training_data_in_every_style(spark, llm_cfg):
    """Seed system 001's workflow (a spec, seed pairs, no code): execution is a check not run, recorded on every
    row, and the job goes on to training files in each style."""
    tools_cfg = llm_cfg.tools.model_copy(update={"functions": "", "calls": ""})
    cfg = llm_cfg.model_copy(
        update={"tools": tools_cfg, "finetune": llm_cfg.finetune.model_copy(update={"backend": "none"})}
    )
    summary = pipeline.run(cfg, job="lakesynth_tools", root=ROOT)
    stages = summary["stages"]
    assert stages["call_execution"]["status"] == "skipped" and "not run" in stages["call_execution"]["reason"]
    assert not [k for k, s in stages.items() if s["status"] == "failed" or s.get("stopped")], stages
    verdicts = spark.table(where(cfg).fqn("call_verdicts")).collect()
    assert verdicts and {v.execution for v in verdicts} == {"not run: no implementations (--functions)"}
    assert stages["call_verdicts"]["execution"] == {"not run: no implementations (--functions)": len(verdicts)}
    kept = sum(v.keep for v in verdicts)
    assert kept and stages["tool_format"]["rows_out"] == kept
    for style in ("json_content", "openai", "hf"):
        output = cfg.tools.output.model_copy(update={"style": style})
        styled = cfg.model_copy(update={"tools": cfg.tools.model_copy(update={"output": output})})
        done = pipeline.run(styled, ["tool_format"], job="lakesynth_tools", root=ROOT)
        lines = _lines(done)
        assert len(lines) == kept and done["stages"]["tool_format"]["style"] == style
        assert all(("tools" in line) == (style != "json_content") for line in lines)


def _gguf_string(path: Path, key: str) -> str:
    """One string of a GGUF file's metadata. Reading the file's whole tokenizer (transformers, or gguf's reader)
    takes over a minute on 2 cores for 151k tokens; this steps over them."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> bytes
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:

        def string_end(at: int) -> int:
            return at + 8 + struct.unpack_from("<Q", data, at)[0]

        (count,), at = struct.unpack_from("<Q", data, 16), 24  # magic, version, tensor count, then the key count
        for _ in range(count):
            name, at = data[at + 8 : string_end(at)].decode(), string_end(at)
            (kind,), at = struct.unpack_from("<I", data, at), at + 4
            if name == key and kind == 8:
                return data[at + 8 : string_end(at)].decode()
            if kind == 8:
                at = string_end(at)
            elif kind == 9:  # an array: element type, length, elements
                (element, length), at = struct.unpack_from("<IQ", data, at), at + 12
                for _ in range(length if element == 8 else 0):
                    at = string_end(at)
                at += 0 if element == 8 else sizes[element] * length
            else:
                at += sizes[kind]
    raise KeyError(f"{path}: no {key}")


def test_the_hf_style_renders_with_a_real_tool_calling_chat_template(spark, checked, cfg):
    """Qwen2.5's own chat template (read from the packaged teacher's GGUF) renders the tools and the calls, through
    transformers' apply_chat_template as TRL calls it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from lakesynth.llm import embedded

    summary = _run(spark, checked, cfg, "hf")
    line = next(x for x in _lines(summary) if x["messages"][0]["content"].startswith("What are my checking"))
    gguf = embedded.packaged_model(Path(cfg.model_cache).expanduser())
    template = _gguf_string(gguf, "tokenizer.chat_template")
    assert "Qwen" in template
    vocabulary = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))  # rendering tokenizes nothing
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=vocabulary, chat_template=template)
    text = tokenizer.apply_chat_template(line["messages"], tools=line["tools"], tokenize=False)
    assert "<tools>" in text and '"name": "transfer_money"' in text
    assert text.count('<tool_call>\n{"name": "get_balance", "arguments": {"account": ') == 2  # the two calls


@pytest.mark.parametrize(
    "expected, got, match",
    [
        (
            [{"name": "get_balance", "arguments": {"account": "savings"}}],
            [{"name": "get_balance", "arguments": {"account": " Savings "}}],
            True,
        ),
        (
            [{"name": "get_balance", "arguments": {"account": "savings"}}],
            [{"name": "get_balance", "arguments": {"account": "checking"}}],
            False,
        ),
        (
            [{"name": "get_balance", "arguments": {"account": "savings"}}],
            [{"name": "list_transactions", "arguments": {"account": "savings"}}],
            False,
        ),
        (
            [{"name": "get_balance", "arguments": {"account": "savings"}}],
            [{"name": "get_balance", "arguments": {}}],
            False,
        ),  # required
        (
            [{"name": "get_balance", "arguments": {"account": "a"}}],
            [{"name": "get_balance", "arguments": {"account": "a", "x": 1}}],
            False,
        ),
        (
            [{"name": "list_transactions", "arguments": {"account": "a"}}],
            [{"name": "list_transactions", "arguments": {"account": "a", "limit": 10}}],
            True,
        ),  # the default
        (
            [{"name": "list_transactions", "arguments": {"account": "a"}}],
            [{"name": "list_transactions", "arguments": {"account": "a", "limit": 5}}],
            False,
        ),
        (
            [{"name": "convert", "arguments": {"amount": 10.0}}],
            [{"name": "convert", "arguments": {"amount": 10}}],
            True,
        ),  # int for a number
        (
            [{"name": "list_transactions", "arguments": {"account": "a", "limit": 3}}],
            [{"name": "list_transactions", "arguments": {"account": "a", "limit": 3.0}}],
            False,
        ),
        (
            [{"name": "convert", "arguments": {"amount": 1.0}}],
            [{"name": "convert", "arguments": {"amount": True}}],
            False,
        ),  # a bool is no number
        (
            [
                {"name": "get_balance", "arguments": {"account": "a"}},
                {"name": "get_balance", "arguments": {"account": "b"}},
            ],
            [
                {"name": "get_balance", "arguments": {"account": "b"}},
                {"name": "get_balance", "arguments": {"account": "a"}},
            ],
            True,
        ),  # parallel calls in any order
        ([], [], True),  # irrelevance: no call
        ([], [{"name": "get_balance", "arguments": {"account": "a"}}], False),
        ([{"name": "get_balance", "arguments": {"account": "a"}}], None, False),  # not a list of calls
    ],
)
def test_the_ast_check_matches_as_bfcl_does(expected, got, match):
    assert ast_match.calls_match(expected, got, TOOLS) is match


def test_replies_are_parsed_as_calls_or_refused():
    assert ast_match.parse_reply('```json\n[{"name": "f", "arguments": {"a": 1}}]\n```') == [
        {"name": "f", "arguments": {"a": 1}}
    ]
    assert ast_match.parse_reply('{"name": "f", "arguments": {}}') == [{"name": "f", "arguments": {}}]
    assert ast_match.parse_reply("[]") == []
    assert ast_match.parse_reply("I cannot help with that.") is None
    assert ast_match.parse_reply('[{"arguments": {}}]') is None


@pytest.mark.slow
def test_the_tools_job_fine_tunes_on_its_examples_and_scores_both_students(spark, llm_cfg, teacher_server):
    """The job's fine-tune task carries `finetune.dataset=training_tools` (applied locally as on Databricks);
    the evaluation scores each student's reply with the AST check, per category. With trajectories on (the stand-in
    teacher writes the final answers, its text stating no number), each step of a trajectory is scored given the
    reference dialog so far, the final answer by the judge and the invented-value check."""
    from lakesynth.tools import tool_evaluate

    cfg = llm_cfg
    semantic_off = cfg.tools.semantic.model_copy(update={"enabled": False})
    short = cfg.tools.evaluate.model_copy(update={"max_new_tokens": 24})
    on = cfg.tools.trajectories.model_copy(update={"enabled": True})
    teacher_server.reset(no_digits=True)
    cfg = cfg.model_copy(
        update={
            "tools": cfg.tools.model_copy(
                update={"semantic": semantic_off, "evaluate": short, "seeds": "", "trajectories": on}
            ),
            "format": cfg.format.model_copy(update={"val_fraction": 0.5}),
            "finetune": cfg.finetune.model_copy(update={"max_steps": 1, "val_examples": 2, "max_length": 160}),
        }
    )
    summary = pipeline.run(cfg, job="lakesynth_tools", root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    tuned = summary["stages"]["finetune"]
    examples = tables.read(spark, where(cfg), tool_format.TABLE)
    train = examples.where("split = 'train'").collect()
    # It trained on the tool examples: one prompt/completion pair per assistant message (a call, a final answer).
    assert tuned["rows_in"] == sum(m.role == "assistant" for r in train for m in r.messages) > len(train) > 0
    result = summary["stages"]["tool_evaluate"]
    rows = tables.read(spark, where(cfg), tool_evaluate.TABLE).collect()
    assert result["examples"] == len(rows) == examples.where("split = 'val'").count() > 0
    tools = {r.name: json.loads(r.parameters) for r in spark.table(where(cfg).fqn("tools")).collect()}
    for r in rows:
        expected = json.loads(r.expected)
        for variant in ("base", "tuned"):
            reply = ast_match.parse_reply(getattr(r, f"{variant}_reply"))
            assert getattr(r, f"{variant}_match") == ast_match.calls_match(expected, reply, tools)
    for variant in ("base", "tuned"):
        hits = [getattr(r, f"{variant}_match") for r in rows]
        assert result[f"{variant}_accuracy"] == round(sum(hits) / len(hits), 3)
        assert set(result[f"{variant}_accuracy_by_category"]) == {r.category for r in rows}
    held = [r for r in rows if r.reference_answer is not None]
    assert result["trajectories"] == len(held) > 0
    judged = {
        (j.example_id, j.variant): j.passed for j in tables.read(spark, where(cfg), tool_evaluate.JUDGEMENTS).collect()
    }
    assert set(judged) == {(r.example_id, v) for r in held for v in ("base", "tuned")}
    for variant in ("base", "tuned"):
        ok = [judged[(r.example_id, variant)] and not json.loads(getattr(r, f"{variant}_invented")) for r in held]
        both = [a and getattr(r, f"{variant}_match") for a, r in zip(ok, held)]
        assert result[f"{variant}_answer_pass_rate"] == round(sum(ok) / len(ok), 3)
        assert result[f"{variant}_trajectory_success"] == round(sum(both) / len(both), 3)
    requests = teacher_server.stats.requests
    again = pipeline.run(cfg, ["tool_evaluate"], job="lakesynth_tools", root=ROOT)["stages"]["tool_evaluate"]
    assert again["reused"] and again["tuned_accuracy"] == result["tuned_accuracy"]  # nothing generated twice
    assert teacher_server.stats.requests == requests  # nor judged twice


def test_the_accuracy_figure_shows_each_category_for_both_students():
    from lakesynth.tools import tool_evaluate

    rows = [
        {"category": "simple", "base_match": True, "tuned_match": True},
        {"category": "simple", "base_match": False, "tuned_match": True},
        {"category": "irrelevance", "base_match": False, "tuned_match": True},
        {"category": "irrelevance", "base_match": False, "tuned_match": False},
    ]
    result = tool_evaluate.accuracy(rows)
    assert result["base_accuracy"] == 0.25 and result["tuned_accuracy_by_category"] == {
        "irrelevance": 0.5,
        "simple": 1.0,
    }
    figure = tool_evaluate.figure(result)
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.get_xticklabels()] == ["irrelevance", "simple"]
    assert [p.get_height() for p in axes.patches] == [0.0, 0.5, 0.5, 1.0]  # base per category, then tuned
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["base 25%", "tuned 75%"]
