"""Invented call arguments: a postcode, a phone number or an amount that the query never states is dropped with
`invented_argument:<name>`; a value the query gives in another format, a default and an enum value are kept."""

from __future__ import annotations

import json

from conftest import ROOT, where, write

from lakesynth import pipeline
from lakesynth.core import tables
from lakesynth.tools import call_arguments, call_verdicts


def _tool(name: str, properties: dict, required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": name, "parameters": parameters}}


TOOLS = [
    _tool("check_coverage", {"postcode": {"type": "string"}}, ["postcode"]),
    _tool("send_sms", {"to": {"type": "string"}, "message": {"type": "string"}}, ["to", "message"]),
    _tool("port_number", {"from_number": {"type": "string"}, "to_number": {"type": "string"}}, ["from_number"]),
    _tool(
        "top_up",
        {
            "phone": {"type": "string"},
            "amount": {"type": "number"},
            "currency": {"type": "string", "enum": ["GBP", "EUR"], "default": "GBP"},
        },
        ["phone", "amount"],
    ),
    _tool(
        "list_usage",
        {"months": {"type": "integer", "default": 3}, "since": {"type": "string"}},
        [],
    ),
]
# (id, query, calls, expected drop_reason or None for a control that must be kept)
PLANTED = [
    ("postcode", "Is there 5G coverage where I live?", [("check_coverage", {"postcode": "SW1A 1AA"})],
     "invented_argument:postcode"),
    ("phone", "Text my mum that I'll be late.", [("send_sms", {"to": "+447700900123", "message": "I'll be late"})],
     "invented_argument:to"),
    ("two-phones", "Move my number to my new SIM.",
     [("port_number", {"from_number": "07700900123", "to_number": "07700900456"})], "invented_argument:from_number"),
    ("amount", "Top up my phone 07700 900123.", [("top_up", {"phone": "07700900123", "amount": 20})],
     "invented_argument:amount"),
    ("quoted-postcode", "Is there coverage at sw1a 1aa?", [("check_coverage", {"postcode": "SW1A 1AA"})], None),
    ("quoted-phone", "Text 07700 900123: running late", [("send_sms", {"to": "07700900123", "message": "Late!"})],
     None),
    ("enum-and-amount", "Top up 07700900123 with £20", [("top_up", {"phone": "07700 900123", "amount": 20,
                                                                   "currency": "GBP"})], None),
    ("default", "Show my usage.", [("list_usage", {"months": 3})], None),
    ("date", "Show my usage since 1 March 2025.", [("list_usage", {"since": "2025-03-01"})], None),
    ("no-call", "Which phone should I buy?", [], None),
]  # fmt: skip


def _cfg(cfg, tmp_path, *, enabled: bool = True):
    spec = write(tmp_path / "tools.json", json.dumps(TOOLS))
    lines = [
        {"id": i, "query": q, "function_calls": [{"function_name": n, "arguments": a} for n, a in calls]}
        for i, q, calls, _ in PLANTED
    ]
    calls = write(tmp_path / "calls.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    t = cfg.tools
    tools_cfg = t.model_copy(
        update={
            "spec": spec,
            "functions": "",
            "calls": calls,
            "seeds": "",
            "semantic": t.semantic.model_copy(update={"enabled": False}),
            "arguments": t.arguments.model_copy(update={"enabled": enabled}),
        }
    )
    return cfg.model_copy(update={"tools": tools_cfg})


STAGES = ["tools", "calls", "call_format", "call_arguments", "call_verdicts"]


def test_planted_calls_are_dropped_or_kept_exactly_as_planted(spark, cfg, tmp_path):
    cfg = _cfg(cfg, tmp_path)
    summary = pipeline.run(cfg, STAGES, job="lakesynth_tools", root=ROOT)
    assert all(s["status"] == "ok" for s in summary["stages"].values()), summary["stages"]
    rows = {r.source_id: r for r in tables.read(spark, where(cfg), call_verdicts.TABLE).collect()}
    assert {k: r.drop_reason for k, r in rows.items()} == {i: why for i, _, _, why in PLANTED}
    both = json.loads(rows["two-phones"].invented_arguments)
    assert [(f["name"], f["value"]) for f in both] == [("from_number", "07700900123"), ("to_number", "07700900456")]
    verdicts = {r.source_id: r for r in tables.read(spark, where(cfg), call_arguments.TABLE).collect()}
    assert all(v.model == "rule:invented_argument" and v.reasoning for v in verdicts.values())
    assert 'postcode="SW1A 1AA" is not in the query' in verdicts["postcode"].reasoning


def test_switched_off_it_leaves_no_verdict_behind(spark, cfg, tmp_path):
    on = _cfg(cfg, tmp_path)
    pipeline.run(on, STAGES, job="lakesynth_tools", root=ROOT)
    off = _cfg(cfg, tmp_path, enabled=False)
    summary = pipeline.run(off, STAGES, job="lakesynth_tools", root=ROOT)
    assert summary["stages"]["call_arguments"]["disabled"] == "tools.arguments.enabled is false"
    assert tables.read(spark, where(cfg), call_arguments.TABLE).count() == 0
    assert all(r.keep for r in tables.read(spark, where(cfg), call_verdicts.TABLE).collect())
