"""Whether a model's function calls match the expected ones, as the Berkeley Function Calling Leaderboard's AST
check decides it: the same function; every required argument present and none the tool does not have; values
equal by type (an integer is accepted for a number; strings compared lower-cased, without spaces and
`,./-_*^`); an optional argument left out only where the expected call leaves it out too or it is the default;
parallel calls in any order; and no call at all where none is expected (irrelevance).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

_STRIP = re.compile(r"[\s,./\-_*^]")


def _text(value: str) -> str:
    return _STRIP.sub("", value.lower())


def value_matches(expected: Any, got: Any) -> bool:
    """One argument's value, by type."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(expected, bool) and isinstance(got, bool) and expected == got
    if isinstance(expected, float) and isinstance(got, int):
        return float(got) == expected  # an integer is a valid number
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return type(expected) is type(got) and expected == got
    if isinstance(expected, str) and isinstance(got, str):
        return _text(expected) == _text(got)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(value_matches(e, g) for e, g in zip(expected, got))
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(value_matches(expected[k], got[k]) for k in expected)
    return expected is None and got is None


def call_matches(expected: dict, got: dict, parameters: dict | None) -> bool:
    """One call against the expected one, given the tool's `parameters` schema."""
    if not isinstance(got, dict) or got.get("name") != expected["name"]:
        return False
    want, have = expected.get("arguments") or {}, got.get("arguments")
    if not isinstance(have, dict):
        return False
    properties = (parameters or {}).get("properties", {})
    required = set((parameters or {}).get("required", []))
    if not required <= have.keys() or (properties and not have.keys() <= properties.keys()):
        return False
    for key in want.keys() | have.keys():
        if key in want and key in have:
            if not value_matches(want[key], have[key]):
                return False
        elif key in have:  # given but not expected: only its default would be the same call
            if "default" not in properties.get(key, {}) or not value_matches(properties[key]["default"], have[key]):
                return False
        elif key in required:
            return False
        elif "default" not in properties.get(key, {}) or not value_matches(want[key], properties[key]["default"]):
            return False  # expected but left out, and the default is not what was expected
    return True


def calls_match(expected: list[dict], got: list[dict] | None, tools: dict[str, dict]) -> bool:
    """A reply's calls against the expected list, in any order; `tools` maps a name to its parameters."""
    if got is None or len(got) != len(expected):
        return False
    if not expected:
        return True  # irrelevance: no call expected, none made
    if len(expected) > 6:  # permutations grow fast; such replies are compared in order
        return all(call_matches(e, g, tools.get(e["name"])) for e, g in zip(expected, got))
    return any(
        all(call_matches(e, g, tools.get(e["name"])) for e, g in zip(expected, order))
        for order in itertools.permutations(got)
    )


def parse_reply(text: str | None) -> list[dict] | None:
    """A `json_content` reply as a list of calls, or None when it is not one (a code fence around it is fine)."""
    if not text:
        return None
    body = text.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", body, re.S)
    body = fenced.group(1) if fenced else body
    try:
        calls = json.loads(body)
    except ValueError:
        return None
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not all(isinstance(c, dict) and "name" in c for c in calls):
        return None
    return [{"name": c["name"], "arguments": c.get("arguments", c.get("parameters", {}))} for c in calls]
