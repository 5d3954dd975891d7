"""Training-example shapes and their exports, checked against the formats the trainers document."""

from __future__ import annotations

import functools
import json

import pytest

from lakesynth.training import examples, splits

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and country, eg. San Francisco, USA"},
                    "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location", "format"],
            },
        },
    }
]
CALL = {
    "id": "call_id",
    "type": "function",
    "function": {"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", "format": "celsius"}},
}


def _tool_example():
    return {
        "shape": "tool_chat",
        "messages": [
            examples.message("user", "What is the weather in San Francisco?"),
            examples.message("assistant", None, tool_calls=[CALL]),
        ],
        "tools": json.dumps(TOOLS),
    }


def test_plain_chat_is_the_same_line_for_openai_and_databricks():
    chat = {"shape": "chat", "messages": [examples.message("user", "Hi?"), examples.message("assistant", "Hello.")]}
    line = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    assert examples.to_lines(chat, "openai") == examples.to_lines(chat, "databricks") == [line]


def test_openai_tool_calling_line_has_arguments_as_a_json_string_and_top_level_tools():
    (line,) = examples.to_lines(_tool_example(), "openai")
    # The shape of OpenAI's fine-tuning guide ("Fine-tuning with function calling").
    assert line["tools"] == TOOLS
    assistant = line["messages"][1]
    assert "content" not in assistant and assistant["role"] == "assistant"
    (call,) = assistant["tool_calls"]
    assert call["id"] == "call_id" and call["type"] == "function"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, USA", "format": "celsius"}


def test_trl_line_has_arguments_as_a_dict_and_tools_as_schemas():
    (line,) = examples.to_lines(_tool_example(), "trl_sft")
    assert line["messages"][1]["tool_calls"][0]["function"]["arguments"] == {
        "location": "San Francisco, USA",
        "format": "celsius",
    }
    assert line["tools"] == [TOOLS[0]["function"]]


def test_databricks_line_carries_calls_as_the_assistants_json_content():
    (line,) = examples.to_lines(_tool_example(), "databricks")
    assert [m["role"] for m in line["messages"]] == ["user", "assistant"]
    assert json.loads(line["messages"][1]["content"]) == [
        {"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", "format": "celsius"}}
    ]
    with pytest.raises(ValueError, match="no 'tool' role"):
        examples.to_lines({"messages": [examples.message("tool", "18C", tool_call_id="call_id")]}, "databricks")


def test_preference_pairs_export_as_trl_dpo_and_kto():
    pair = {
        "shape": "preference",
        "messages": [examples.message("user", "Should I buy gold?")],
        "chosen": [examples.message("assistant", "I can't advise on investments; a licensed adviser can.")],
        "rejected": [examples.message("assistant", "Yes, buy gold now.")],
    }
    (dpo,) = examples.to_lines(pair, "trl_dpo")
    assert dpo == {
        "prompt": [{"role": "user", "content": "Should I buy gold?"}],
        "chosen": [{"role": "assistant", "content": "I can't advise on investments; a licensed adviser can."}],
        "rejected": [{"role": "assistant", "content": "Yes, buy gold now."}],
    }
    kto = examples.to_lines(pair, "trl_kto")
    assert [(k["completion"], k["label"]) for k in kto] == [(dpo["chosen"], True), (dpo["rejected"], False)]
    with pytest.raises(ValueError, match="needs preference examples"):
        examples.to_lines(_tool_example(), "trl_dpo")


def test_every_shape_round_trips_through_a_spark_table(spark):
    """The contract's columns hold all three shapes, and the export reads them back from Spark rows."""
    from pyspark.sql import types as T

    schema = T.StructType(
        [T.StructField("example_id", T.StringType())] + [T.StructField(n, t) for n, t in examples.COLUMNS]
    )
    tool = _tool_example()
    rows = [
        ("c", "chat", [examples.message("user", "Hi?"), examples.message("assistant", "Hello.")], None, None, None),
        ("t", "tool_chat", tool["messages"], tool["tools"], None, None),
        (
            "p",
            "preference",
            [examples.message("user", "Q?")],
            None,
            [examples.message("assistant", "Good.")],
            [examples.message("assistant", "Bad.")],
        ),
    ]
    df = spark.createDataFrame(rows, schema)
    lines = {
        r.example_id: json.loads(r.value)
        for r in df.where("shape <> 'preference'")
        .mapInPandas(functools.partial(examples.json_lines, fmt="openai"), "value string, example_id string")
        .collect()
    }
    assert lines["t"] == examples.to_lines(tool, "openai")[0]
    assert lines["c"] == {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    dpo = (
        df.where("shape = 'preference'")
        .mapInPandas(functools.partial(examples.json_lines, fmt="trl_dpo"), "value string, example_id string")
        .collect()
    )
    assert json.loads(dpo[0].value)["rejected"] == [{"role": "assistant", "content": "Bad."}]


def test_a_stratified_split_gives_every_stratum_its_exact_share(spark):
    sizes = {("get_balance", "simple"): 10, ("get_balance", "parallel"): 7, ("block_card", "simple"): 3}
    rows = [(f"{f}-{c}-{i}", f"query {f} {c} {i}", f, c) for (f, c), n in sizes.items() for i in range(n)]
    # A question asked twice (same normalised text) counts once, and both copies share its split.
    rows += [("twice-a", "Query get_balance simple 0?", "get_balance", "simple")]
    frame = spark.createDataFrame(rows, "example_id string, text string, function string, category string")
    split = functools.partial(
        splits.stratified_split,
        by="text",
        strata=["function", "category"],
        val_fraction=0.2,
        test_fraction=0.1,
        seed=7,
    )
    got = {r.example_id: (r.function, r.category, r.split) for r in split(frame).collect()}
    counts = {}
    for f, c, s in (v for k, v in got.items() if k != "twice-a"):  # shares are counted in distinct questions
        counts[(f, c, s)] = counts.get((f, c, s), 0) + 1
    assert sum(v for (_, _, s), v in counts.items() if s == "val") == round(20 * 0.2)
    assert sum(v for (_, _, s), v in counts.items() if s == "test") == round(20 * 0.1)
    for (f, c), n in sizes.items():  # each stratum within one example of its share of every split
        for name, share in (("val", 0.2), ("test", 0.1)):
            assert abs(counts.get((f, c, name), 0) - n * share) < 1
    assert {r.example_id: r.split for r in split(frame).collect()} == {k: v[2] for k, v in got.items()}  # stable
    assert got["twice-a"][2] == got["get_balance-simple-0"][2]
