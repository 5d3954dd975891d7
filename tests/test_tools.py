"""The function-calling job's verification: tool specs in (OpenAI JSON or typed Python), calls made elsewhere
checked against the full JSON Schema and run sandboxed, and a verdict for every input line."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, context, where, with_endpoint, write

from lakesynth import pipeline
from lakesynth.core import tables
from lakesynth.errors import SeedError
from lakesynth.tools import call_generation, call_relevance, call_semantic, call_verdicts, tools
from lakesynth.tools import spec as toolspec

SAMPLE = ROOT / "conf" / "tools"
# conf/tools/calls.jsonl: each line's id and the verdict it must get (the last line is not JSON: its line number).
EXPECTED = {
    "ok-balance": None,
    "ok-parallel": None,
    "ok-openai": None,
    "ok-irrelevant": None,
    "missing-amount": "format:missing_required",
    "bad-enum": "format:enum",
    "integer-not-number": "format:wrong_type",
    "bool-not-integer": "format:wrong_type",
    "scheduled-without-date": "format:missing_required",  # the schema's if/then
    "bad-pattern": "format:pattern",
    "extra-argument": "format:unexpected_argument",
    "duplicate-items": "format:uniqueItems",
    "nested-missing": "format:missing_required",
    "unknown-function": "format:unknown_function",
    "bad-json-arguments": "format:arguments_not_json",
    "raises": "execution:ValueError",
    "no-calls-key": "format:malformed",
    "18": "format:malformed",
}


def _tools_cfg(cfg, **tools_changes):
    return cfg.model_copy(update={"tools": cfg.tools.model_copy(update=tools_changes)})


@pytest.mark.slow
def test_every_input_line_gets_its_verdict_through_the_tools_job(spark, llm_cfg, teacher_server):
    """The sample: the --calls lines and the pairs generated from the seeds, each with its verdict."""
    cfg = llm_cfg.model_copy(update={"finetune": llm_cfg.finetune.model_copy(update={"backend": "none"})})
    summary = pipeline.run(cfg, job="lakesynth_tools", root=ROOT)
    assert all(s["status"] in ("ok", "skipped") for s in summary["stages"].values()), summary["stages"]
    generated = {r.request_id: r for r in tables.read(spark, where(cfg), call_generation.TABLE).collect()}
    assert len(generated) == 4 * cfg.tools.generation.per_function and all(g.error is None for g in generated.values())
    assert summary["tables"]["call_verdicts"]["rows"] == len(EXPECTED) + len(generated)
    everything = {r.source_id: r for r in tables.read(spark, where(cfg), call_verdicts.TABLE).collect()}
    verdicts = {k: v for k, v in everything.items() if k not in generated}
    # Each generated pair was decoded against its category's schema, and judged as any other pair.
    for request_id, g in generated.items():
        n = len(json.loads(g.calls))
        assert {"irrelevance": n == 0, "parallel": 2 <= n <= 4}.get(g.category, n == 1), (g.category, g.calls)
        assert everything[request_id].calls == g.calls and everything[request_id].category == g.category
    assert {g.category for g in generated.values()} == set(cfg.tools.generation.mix)
    # The yield funnel: every pair kept (in training_tools) or dropped once; each requested category and tool has
    # its line, and one with no kept example is a warning.
    f = summary["funnel"]
    assert f["generated"] == len(everything) and f["kept"] == summary["tables"]["training_tools"]["rows"]
    assert f["kept"] + sum(s["dropped"] for s in f["steps"]) == f["generated"]
    assert set(cfg.tools.generation.mix) <= set(f["by"]["category"])
    assert {g.function for g in generated.values()} <= set(f["by"]["function"])
    for group in ("category", "function"):
        for value, g in f["by"][group].items():
            warned = any(w.startswith(f"{group} '{value}': 0 kept") for w in summary["warnings"])
            assert warned == (not g["kept"]), (group, value, g)
    # The semantic checker (the stand-in judge) sees exactly the lines that passed format and execution.
    judged = {r.source_id: r for r in tables.read(spark, where(cfg), call_semantic.TABLE).collect()}
    judged = {k: v for k, v in judged.items() if k not in generated}
    assert set(judged) == {k for k, v in EXPECTED.items() if v is None}
    assert all(j.reasoning and j.model == "standin" for j in judged.values())
    expected = {k: v or (None if judged[k].passed else "semantic") for k, v in EXPECTED.items()}
    assert {k: v.drop_reason for k, v in verdicts.items()} == expected
    assert all(v.keep == (expected[k] is None) for k, v in verdicts.items())
    assert {k: v.semantic_reasoning for k, v in verdicts.items() if k in judged} == {
        k: j.reasoning for k, j in judged.items()
    }
    # Results are data: the parallel call's two balances, and the error of the call that raised.
    parallel = json.loads(verdicts["ok-parallel"].execution_results)
    assert [r["result"]["balance"] for r in parallel] == [1520.4, 8200.0] and all(r["ok"] for r in parallel)
    raised = json.loads(verdicts["raises"].execution_results)[0]
    assert raised["error"] == "ValueError: cannot transfer to the same account"
    # Each row says what execution did with it: a malformed call never ran.
    ran = {k: v.execution for k, v in verdicts.items()}
    assert ran["ok-parallel"] == "passed" and ran["raises"] == "failed"
    assert ran["missing-amount"] == ran["18"] == "not run: failed the format check"
    assert summary["stages"]["call_verdicts"]["execution"]["failed"] == 1
    issues = json.loads(verdicts["scheduled-without-date"].format_issues)
    assert issues[0]["rule"] == "missing_required" and "'date' is a required property" in issues[0]["message"]
    assert json.loads(verdicts["ok-openai"].calls)[0]["arguments"]["card_last_digits"] == "4821"
    # A rerun on the same implementations runs nothing again, and pays for no judgement.
    teacher_server.reset()
    again = pipeline.run(cfg, job="lakesynth_tools", root=ROOT)
    assert again["stages"]["call_execution"]["rows_out"] == 0 and teacher_server.stats.completions == 0
    assert again["stages"]["call_verdicts"]["kept"] == summary["stages"]["call_verdicts"]["kept"]
    # One more pair per tool asks for those four alone.
    more = cfg.tools.generation.model_copy(update={"per_function": cfg.tools.generation.per_function + 1})
    pipeline.run(_tools_cfg(cfg, generation=more), ["call_generation"], job="lakesynth_tools", root=ROOT)
    assert teacher_server.stats.completions == 4 + 1  # and the one-token check of the endpoint before them


def test_the_semantic_prompt_shows_the_tools_query_calls_and_results(llm_cfg):
    import pandas as pd

    batch = pd.DataFrame(
        {
            "query": ["What is in my savings?"],
            "calls": [json.dumps([{"name": "get_balance", "arguments": {"account": "savings"}}])],
            "results": [json.dumps([{"name": "get_balance", "ok": True, "result": {"balance": 8200.0}}])],
            "answer": [None],
        }
    )
    (messages,) = call_semantic.step(llm_cfg, tools='{"name": "get_balance"}').prompts(batch)
    text = messages[0]["content"]
    assert '{"name": "get_balance"}' in text and "What is in my savings?" in text
    assert '"account": "savings"' in text and "8200.0" in text and "none:" not in text
    assert "final answer" not in text and "all three answers" in text
    # With tools.trajectories: the judge reads the final answer too, and checks that it uses the results.
    (messages,) = call_semantic.step(llm_cfg, tools="").prompts(batch.assign(answer=["You have 8,200.00 EUR."]))
    text = messages[0]["content"]
    assert "You have 8,200.00 EUR." in text and "4. Does the final answer use" in text and "all four" in text


def _validators(spec_path) -> dict:
    from jsonschema import Draft202012Validator, FormatChecker

    return {
        t["function"]["name"]: Draft202012Validator(t["function"]["parameters"], format_checker=FormatChecker())
        for t in toolspec.read_spec(str(spec_path))
    }


@pytest.mark.parametrize(
    "name, arguments, rule",
    [
        ("list_transactions", {"account": "checking", "limit": 3}, None),
        ("transfer_money", {"from_account": "checking", "to_account": "savings", "amount": 3}, None),  # int is a number
        ("transfer_money", {"from_account": "checking", "to_account": "savings", "amount": True}, "wrong_type"),
        ("transfer_money", {"from_account": "checking", "to_account": "savings", "amount": 0}, "exclusiveMinimum"),
        ("transfer_money", {"from_account": "checking", "to_account": "savings", "amount": 20000}, "maximum"),
        ("list_transactions", {"account": "checking", "limit": 0}, "minimum"),
        ("list_transactions", {"account": "checking", "categories": []}, "minItems"),
        ("list_transactions", {"account": "checking", "categories": ["a", "b", "c", "d", "e", "f"]}, "maxItems"),
        ("list_transactions", {"account": "checking", "categories": ["x"]}, "minLength"),
        ("list_transactions", {"account": "checking", "period": {"from": "2026-13-45"}}, "format"),
        ("list_transactions", {"account": "checking", "period": {"from": "2026-01-01", "x": 1}}, "unexpected_argument"),
    ],
)
def test_the_format_check_names_the_failing_rule(name, arguments, rule):
    found = toolspec.call_issues([{"name": name, "arguments": arguments}], None, _validators(SAMPLE / "tools.json"))
    assert (found[0]["rule"] if found else None) == rule


def test_a_spec_from_a_typed_module_and_its_docstrings(tmp_path):
    module = write(
        tmp_path / "bank.py",
        '''
from typing import Literal

from pydantic import BaseModel


class Period(BaseModel):
    start: str
    end: str | None = None


def find_branch(city: str, services: list[str], max_km: float = 5.0, open_now: bool = False) -> list:
    """Find bank branches near a city.

    Args:
        city: The city to search in.
        services (list[str]): Services the branch must offer,
            such as "mortgage advice".
    """
    return []


def statement(account: Literal["checking", "savings"], months: int, period: Period | None = None) -> str:
    """Get an account statement."""
    return ""


def _helper(x):
    return x
''',
    )
    specs = {t["function"]["name"]: t["function"] for t in toolspec.derive_spec(str(module))}
    assert set(specs) == {"find_branch", "statement"}
    branch = specs["find_branch"]
    assert branch["description"] == "Find bank branches near a city."
    params = branch["parameters"]
    assert params["required"] == ["city", "services"] and params["properties"]["max_km"] == {
        "default": 5.0,
        "type": "number",
    }
    assert params["properties"]["services"]["items"] == {"type": "string"}
    assert (
        params["properties"]["services"]["description"] == 'Services the branch must offer, such as "mortgage advice".'
    )
    assert params["properties"]["open_now"]["type"] == "boolean"
    statement = specs["statement"]["parameters"]
    assert statement["properties"]["account"]["enum"] == ["checking", "savings"]
    assert statement["properties"]["months"]["type"] == "integer" and "Period" in statement["$defs"]
    # A derived spec is a valid JSON Schema that validates real arguments, nested model included.
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(statement)
    assert validator.is_valid({"account": "savings", "months": 3, "period": {"start": "2026-01-01"}})
    assert not validator.is_valid({"account": "savings", "months": 3, "period": {"end": "2026-01-01"}})


TYPED_TOOLS = '''
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, Field


class Money(BaseModel):
    amount: float
    currency: Literal["EUR", "GBP", "USD"] = "EUR"


class Step(BaseModel):
    when: str
    payment: Money
    note: Optional[str] = None


def change_plan(
    plan: Literal["basic", "premium"],
    steps: list[Step],
    reason: Optional[str] = None,
    months: Annotated[int, Field(ge=1, le=36)] = 12,
) -> str:
    """Change a customer's payment plan.

    Args:
        plan: The plan to move to.
        steps: The payments of the new plan, in order.
    """
    return plan
'''


def test_postponed_annotations_give_the_same_specs(tmp_path):
    """`from __future__ import annotations` turns every hint into a string: the spec must not change."""
    plain = write(tmp_path / "plain.py", TYPED_TOOLS)
    postponed = write(tmp_path / "postponed.py", "from __future__ import annotations\n" + TYPED_TOOLS)
    specs = toolspec.derive_spec(str(plain))
    assert toolspec.derive_spec(str(postponed)) == specs
    parameters = specs[0]["function"]["parameters"]
    assert parameters["properties"]["plan"]["enum"] == ["basic", "premium"]
    assert parameters["properties"]["plan"]["description"] == "The plan to move to."
    assert parameters["properties"]["months"]["maximum"] == 36 and parameters["required"] == ["plan", "steps"]
    assert {"Money", "Step"} <= set(parameters["$defs"])
    assert parameters["$defs"]["Money"]["properties"]["currency"]["enum"] == ["EUR", "GBP", "USD"]


def test_a_postponed_hint_that_names_nothing_is_named(tmp_path):
    module = write(
        tmp_path / "hidden.py",
        "from __future__ import annotations\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from decimal import Decimal\n\n\ndef refund(amount: Decimal) -> None:\n    '''Refund.'''\n",
    )
    with pytest.raises(
        SeedError, match=r"hidden.py: function refund: the type hint of 'amount' cannot be evaluated: NameError"
    ):
        toolspec.derive_spec(str(module))


PRICED = (
    "from __future__ import annotations\n"
    "from typing import TYPE_CHECKING\n\n"
    "if TYPE_CHECKING:\n"
    "    from decimal import Decimal\n\n\n"
    "def price(sku: str) -> Decimal:\n"
    '    """The price of a product.\n\n'
    "    Args:\n"
    "        sku: The code of the product.\n"
    '    """\n'
)


def test_a_return_hint_imported_only_for_type_checking_is_never_evaluated(tmp_path):
    """The spec describes the parameters: a return type the module imports only under TYPE_CHECKING is fine."""
    (spec,) = toolspec.derive_spec(write(tmp_path / "priced.py", PRICED))
    sku = spec["function"]["parameters"]["properties"]["sku"]
    assert sku == {"type": "string", "description": "The code of the product."}


def test_bad_specs_are_named_and_nothing_is_written(spark, cfg, tmp_path):
    untyped = write(tmp_path / "untyped.py", "def refund(amount: float, reason):\n    '''Refund.'''\n")
    with pytest.raises(SeedError, match=r"function refund: parameter 'reason' has no type hint"):
        toolspec.derive_spec(str(untyped))
    spec = json.loads((SAMPLE / "tools.json").read_text())
    spec["tools"][1]["function"]["parameters"]["properties"]["amount"]["type"] = "money"
    broken = write(tmp_path / "broken.json", json.dumps(spec))
    with pytest.raises(
        SeedError, match=r"tool 2 \(transfer_money\): parameters: not a valid JSON Schema at properties/amount/type"
    ):
        toolspec.read_spec(str(broken))
    legacy = write(tmp_path / "legacy.json", json.dumps({"functions": [t["function"] for t in spec["tools"][:1]]}))
    assert toolspec.read_spec(str(legacy))[0]["function"]["name"] == "get_balance"
    # Spec and module disagree: the missing function is named, and the tools table keeps what it had.
    tools.run(context(cfg))
    partial = write(tmp_path / "partial.py", "def get_balance(account: str) -> dict:\n    return {}\n")
    with pytest.raises(SeedError, match=r"partial.py: does not define transfer_money, block_card, list_transactions"):
        tools.run(context(_tools_cfg(cfg, functions=str(partial))))
    with pytest.raises(SeedError, match=r"tool 2 \(transfer_money\)"):
        tools.run(context(_tools_cfg(cfg, spec=str(broken))))
    names = {r.name for r in tables.read(spark, where(cfg), tools.TABLE).collect()}
    assert names == {"get_balance", "transfer_money", "block_card", "list_transactions"}


def test_a_call_past_its_timeout_fails_its_row_and_the_rest_run(spark, cfg, tmp_path):
    module = write(
        tmp_path / "slow.py",
        "import time\n\n\ndef wait(seconds: float) -> float:\n    '''Wait.'''\n"
        "    time.sleep(seconds)\n    return seconds\n",
    )
    lines = [
        {
            "id": "fast",
            "query": "Wait 0 seconds.",
            "function_calls": [{"function_name": "wait", "arguments": {"seconds": 0}}],
        },
        {
            "id": "slow",
            "query": "Wait 30 seconds.",
            "function_calls": [{"function_name": "wait", "arguments": {"seconds": 30}}],
        },
    ]
    calls_file = write(tmp_path / "calls.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    run_cfg = _tools_cfg(cfg, spec=str(module), functions="", calls=str(calls_file), seeds="")
    semantic_off = run_cfg.tools.semantic.model_copy(update={"enabled": False})
    run_cfg = _tools_cfg(run_cfg, semantic=semantic_off)
    run_cfg = run_cfg.model_copy(
        update={
            "tools": run_cfg.tools.model_copy(
                update={"execution": run_cfg.tools.execution.model_copy(update={"timeout_s": 1.0})}
            )
        }
    )
    summary = pipeline.run(run_cfg, job="lakesynth_tools", root=ROOT)
    assert summary["stages"]["call_verdicts"]["dropped"] == {"execution:Timeout": 1}
    rows = {r.source_id: r for r in tables.read(spark, where(cfg), call_verdicts.TABLE).collect()}
    assert rows["fast"].keep and json.loads(rows["slow"].execution_results)[0]["error"].startswith("Timeout")


def test_calls_are_read_from_both_shapes_and_an_unreadable_line_is_a_row():
    rows = toolspec.read_pairs(str(SAMPLE / "calls.jsonl"))
    assert len(rows) == len(EXPECTED) and rows[-1]["source_id"] == "18" and rows[-1]["problem"].startswith("not JSON")
    openai = next(r for r in rows if r["source_id"] == "ok-openai")
    assert json.loads(openai["calls"]) == [
        {"name": "block_card", "arguments": {"card_last_digits": "4821", "order_replacement": True, "reason": "lost"}}
    ]
    assert json.loads(next(r for r in rows if r["source_id"] == "ok-irrelevant")["calls"]) == []


def test_relevance_and_dedup_of_calls_with_the_quality_gates_settings(spark, llm_cfg, teacher_server, tmp_path):
    """SynthCall's reverse query scores each pair with calls; duplicate queries keep one pair per group."""

    def pair(id_, query, name, arguments):
        return {"id": id_, "query": query, "function_calls": [{"function_name": name, "arguments": arguments}]}

    lines = [
        pair("dup-a", "What is the balance of my savings account?", "get_balance", {"account": "savings"}),
        pair("dup-b", "what is the balance of my savings account", "get_balance", {"account": "savings"}),
        pair(
            "near-a",
            "Show the last 10 transactions of my checking account please",
            "list_transactions",
            {"account": "checking", "limit": 10},
        ),
        pair(
            "near-b",
            "Show me the last 10 transactions on my checking account",
            "list_transactions",
            {"account": "checking", "limit": 10},
        ),
        pair(
            "control",
            "Block my card ending 4821, it was stolen.",
            "block_card",
            {"card_last_digits": "4821", "reason": "stolen"},
        ),
        {"id": "none", "query": "Should I buy gold?", "function_calls": []},
    ]
    calls_file = write(tmp_path / "calls.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    embedding = with_endpoint(llm_cfg, "embeddings", base_url=teacher_server.base_url, model="embed")

    def configured(threshold):
        quality = llm_cfg.quality.model_copy(
            update={"relevance": llm_cfg.quality.relevance.model_copy(update={"threshold": threshold})}
        )
        relevance = llm_cfg.tools.relevance.model_copy(update={"enabled": True})
        semantic = llm_cfg.tools.semantic.model_copy(update={"enabled": False})
        cfg = _tools_cfg(embedding, calls=calls_file, seeds="", relevance=relevance, semantic=semantic)
        return cfg.model_copy(update={"quality": quality})

    stages = [
        "tools",
        "call_generation",
        "calls",
        "call_format",
        "call_execution",
        "call_semantic",
        "call_relevance",
        "call_verdicts",
    ]
    summary = pipeline.run(configured(-1.0), stages, job="lakesynth_tools", root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    rows = {r.source_id: r for r in tables.read(spark, where(llm_cfg), call_verdicts.TABLE).collect()}
    judged = {r.source_id: r for r in tables.read(spark, where(llm_cfg), call_relevance.TABLE).collect()}
    assert set(judged) == {"dup-a", "dup-b", "near-a", "near-b", "control"}  # a pair with no calls has none to ask
    for source_id, r in judged.items():
        assert -1 <= r.score <= 1 and r.response and len(json.loads(r.queries)) == llm_cfg.quality.relevance.questions
        assert rows[source_id].relevance_score == r.score
    for a, b, reason in (("dup-a", "dup-b", "exact_duplicate"), ("near-a", "near-b", "near_duplicate")):
        group = "exact_group" if reason == "exact_duplicate" else "near_group"
        assert getattr(rows[a], group) == getattr(rows[b], group) is not None
        assert sorted([rows[a].drop_reason or "", rows[b].drop_reason or ""]) == ["", reason]
    assert rows["control"].keep and rows["none"].keep and rows["control"].exact_group is None
    # A stricter threshold applies to the scores kept, with no call paid again.
    paid = teacher_server.stats.completions
    pipeline.run(configured(0.99), stages, job="lakesynth_tools", root=ROOT)
    assert teacher_server.stats.completions == paid
    rows = {r.source_id: r for r in tables.read(spark, where(llm_cfg), call_verdicts.TABLE).collect()}
    assert {k: r.drop_reason for k, r in rows.items()} == {**{k: "relevance" for k in judged}, "none": None}


def test_a_pool_of_checking_processes_gives_the_verdicts_checked_in_process():
    """The embedded engine's Python UDFs share one interpreter: a large table is checked by processes."""
    import pandas as pd

    from lakesynth.tools import call_format

    rows = toolspec.read_pairs(str(SAMPLE / "calls.jsonl"))
    batch = pd.DataFrame(rows)[["call_id", "source_id", "calls", "problem", "category"]]
    tools = {
        t["function"]["name"]: json.dumps(t["function"]["parameters"])
        for t in toolspec.read_spec(str(SAMPLE / "tools.json"))
    }
    (alone,) = call_format._check(iter([batch]), tools=tools)
    with call_format.checking_pool(tools, 2) as pool:
        assert pool in call_format._POOLS
        (pooled,) = call_format._check(iter([batch]), tools=tools, pool=pool)
    assert pool not in call_format._POOLS and pooled.equals(alone)
    assert dict(zip(pooled.source_id, pooled.drop_reason)) == {
        k: v for k, v in EXPECTED.items() if not (v or "").startswith("execution")
    } | {"raises": None}
