"""What a structured-output request may ask of a tool call: the tools' parameters reduced to the keywords every
backend decodes, and the schema of a list of calls to them (call_generation's pairs, the dialogs' blueprints and
assistant turns)."""

from __future__ import annotations

from typing import Any

# Keywords every structured-output backend decodes (llama.cpp's grammars, vLLM, OpenAI's json_schema): the
# request's schema keeps these, with `$ref`s to `$defs` (pydantic's nested models) written out in place; bounds,
# patterns, formats and conditionals are left to the format check.
DECODABLE = {"type", "properties", "required", "items", "enum", "anyOf", "minItems", "maxItems", "additionalProperties"}


def decodable(schema: Any, defs: dict | None = None, seen: frozenset = frozenset()) -> Any:
    if not isinstance(schema, dict):
        return schema
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen or name not in defs:  # a model that contains itself: left open below this point
            return {}
        return decodable(defs[name], defs, seen | {name})
    kept = {k: v for k, v in schema.items() if k in DECODABLE}
    if "properties" in kept:
        kept["properties"] = {k: decodable(v, defs, seen) for k, v in kept["properties"].items()}
    if isinstance(kept.get("items"), dict):
        kept["items"] = decodable(kept["items"], defs, seen)
    if "anyOf" in kept:
        kept["anyOf"] = [decodable(v, defs, seen) for v in kept["anyOf"]]
    if not isinstance(kept.get("additionalProperties"), bool):
        kept.pop("additionalProperties", None)
    return kept


def calls_schema(tools: dict[str, dict], least: int, most: int) -> dict:
    """A list of `least` to `most` calls, each `{"function_name", "arguments"}` to one of `tools` (name -> parameters)
    with that tool's parameters."""
    return {
        "type": "array",
        "minItems": least,
        "maxItems": most,
        "items": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"function_name": {"type": "string", "enum": [name]}, "arguments": decodable(p)},
                    "required": ["function_name", "arguments"],
                    "additionalProperties": False,
                }
                for name, p in sorted(tools.items())
            ]
        },
    }
