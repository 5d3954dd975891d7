"""Generating function-calling pairs: the plan of requests, the schema each is decoded against, seeds checked on
ingest. The whole job with generation runs in test_tools.py (the sample's seeds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import ROOT, context, where, write
from jsonschema import Draft202012Validator

from lakesynth.core import tables
from lakesynth.errors import SeedError
from lakesynth.tools import call_generation, decoding
from lakesynth.tools import spec as toolspec
from lakesynth.tools.call_generation import CallGenerationConfig

SAMPLE = ROOT / "conf" / "tools"
SPECS = {t["function"]["name"]: t["function"] for t in toolspec.read_spec(str(SAMPLE / "tools.json"))}
PARAMS = {n: s["parameters"] for n, s in SPECS.items()}


def test_requests_are_shared_among_the_mix_exactly():
    assert call_generation.shares(10, {"simple": 0.5, "parallel": 0.3, "irrelevance": 0.2}) == {
        "simple": 5,
        "parallel": 3,
        "irrelevance": 2,
    }
    assert sum(call_generation.shares(7, {"simple": 1, "multiple": 1, "parallel": 1}).values()) == 7
    with pytest.raises(ValueError, match="unknown categories"):
        CallGenerationConfig.model_validate({"mix": {"simple": 1, "chit_chat": 1}})


@pytest.mark.parametrize("category", sorted(toolspec.CATEGORIES))
def test_each_category_decodes_against_the_tools_own_parameters(category):
    schema = call_generation.reply_schema(PARAMS, category)
    Draft202012Validator.check_schema(schema)
    least, most = toolspec.CATEGORIES[category]
    calls = schema["properties"]["function_calls"]
    assert calls["minItems"] == least and calls["maxItems"] == (4 if most is None else most)
    branches = {
        b["properties"]["function_name"]["enum"][0]: b["properties"]["arguments"] for b in calls["items"]["anyOf"]
    }
    assert set(branches) == set(PARAMS)
    # Types, enums and required keys are decoded; bounds, patterns, formats and if/then are left to the check.
    transfer = branches["transfer_money"]
    assert transfer["required"] == PARAMS["transfer_money"]["required"]
    assert transfer["properties"]["when"]["enum"] == ["now", "scheduled"]
    assert "if" not in transfer and "maximum" not in transfer["properties"]["amount"]
    assert "pattern" not in branches["block_card"]["properties"]["card_last_digits"]


def test_the_plan_offers_each_category_its_tools_its_seeds_and_personas_in_turn():
    seeds = call_generation.read_seeds(str(SAMPLE / "seeds.jsonl"), toolspec.validators(PARAMS))
    settings = CallGenerationConfig.model_validate(
        {
            "per_function": 5,
            "mix": {"simple": 1, "multiple": 1, "parallel": 1, "irrelevance": 1, "parallel_multiple": 1},
            "examples": 2,
            "distractors": 2,
            "personas": {"roles": ["a student", "a retiree"], "tones": ["terse"]},
        }
    )
    plan = call_generation.plan(SPECS, seeds, settings)
    assert len(plan) == 5 * len(SPECS) and len({r["request_id"] for r in plan}) == len(plan)
    for row in plan:
        offered = [t["name"] for t in json.loads(row["offered"])]
        shown = [json.loads(e) for e in json.loads(row["examples"])]
        if row["category"] == "multiple":
            assert row["function"] in offered and len(offered) == 3
        elif row["category"] in ("irrelevance", "parallel_multiple"):
            assert sorted(offered) == sorted(SPECS)
        else:
            assert offered == [row["function"]]
        if row["category"] == "irrelevance":  # the seeds that call nothing
            assert shown and all(e["function_calls"] == [] for e in shown)
        else:  # few-shot from this tool's own seeds
            assert len(shown) == 2 and all(
                row["function"] in {c["function_name"] for c in e["function_calls"]} for e in shown
            )
    assert {json.loads(r["persona"])["role"] for r in plan} == {"a student", "a retiree"}
    # The persona and category reach the prompt.
    batch = pd.DataFrame([{**plan[0], "index": 1}])
    (messages,) = call_generation.prompts(batch, template=settings.template)
    content = messages[0]["content"]
    assert json.loads(plan[0]["persona"])["role"] in content and plan[0]["function"] in content


def test_a_seed_that_fails_the_spec_is_an_error_naming_its_line(spark, cfg, tmp_path):
    lines = (SAMPLE / "seeds.jsonl").read_text(encoding="utf-8").splitlines()
    bad = {
        "id": "too-much",
        "query": "Move 20000 EUR.",
        "function_calls": [
            {
                "function_name": "transfer_money",
                "arguments": {"from_account": "checking", "to_account": "savings", "amount": 20000},
            }
        ],
    }
    seeds = write(tmp_path / "seeds.jsonl", "\n".join([*lines, json.dumps(bad)]) + "\n")
    run_cfg = cfg.model_copy(update={"tools": cfg.tools.model_copy(update={"seeds": seeds})})
    ctx = context(run_cfg)
    from lakesynth.tools import tools

    tools.run(ctx)
    with pytest.raises(SeedError, match=rf"seeds.jsonl#{len(lines) + 1} \(too-much\): maximum"):
        call_generation.run(ctx)
    assert tables.count(spark, where(cfg), call_generation.TABLE) == 0  # nothing asked, nothing written


def test_a_category_names_how_many_calls_it_allows():
    checks = toolspec.validators(PARAMS)
    one = [{"name": "get_balance", "arguments": {"account": "savings"}}]
    assert toolspec.call_issues(one, None, checks, "simple") == []
    assert toolspec.call_issues(one, None, checks, "irrelevance")[0]["rule"] == "category_mismatch"
    assert toolspec.call_issues(one, None, checks, "parallel")[0]["rule"] == "category_mismatch"
    assert toolspec.call_issues(one * 2, None, checks, "parallel") == []
    assert toolspec.call_issues([], None, checks, "simple")[0]["rule"] == "category_mismatch"
    assert toolspec.call_issues(one, None, checks, "some_category_of_their_own") == []  # not BFCL's: not checked


def test_more_requests_keep_every_request_already_planned():
    """A larger per_function asks only the new requests: each category's requests keep their ids and prompts."""
    seeds = call_generation.read_seeds(str(SAMPLE / "seeds.jsonl"), toolspec.validators(PARAMS))
    personas = {"roles": ["a student", "a retiree"], "tones": ["terse"]}
    small, large = (
        {
            r["request_id"]: r
            for r in call_generation.plan(SPECS, seeds, CallGenerationConfig(per_function=n, personas=personas))
        }
        for n in (6, 9)
    )
    assert set(small) < set(large) and all(large[k] == v for k, v in small.items())


def test_nested_models_of_a_python_spec_are_decoded_in_place(tmp_path):
    module = write(
        tmp_path / "shop.py",
        '''
from pydantic import BaseModel


class Address(BaseModel):
    street: str
    city: str


def ship(order_id: int, to: Address, note: str | None = None) -> str:
    """Ship an order.

    Args:
        order_id: The order.
        to: Where to.
        note: For the courier.
    """
    return "ok"
''',
    )
    (spec,) = toolspec.derive_spec(module)
    parameters = spec["function"]["parameters"]
    assert "$defs" in json.dumps(parameters)  # pydantic refers to the nested model
    decoded = decoding.decodable(parameters)
    assert "$ref" not in json.dumps(decoded)
    assert decoded["properties"]["to"]["properties"]["city"] == {"type": "string"}
    assert {"type": "null"} in decoded["properties"]["note"]["anyOf"]
    Draft202012Validator.check_schema(call_generation.reply_schema({"ship": parameters}, "simple"))
