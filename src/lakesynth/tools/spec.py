"""Tool specs as OpenAI writes them, read from a JSON file or derived from a Python module, and calls to them.

A spec file is what OpenAI's API takes: a list of tools, `{"tools": [...]}` or `{"functions": [...]}`, each tool
`{"type": "function", "function": {"name", "description", "parameters"}}` or the bare (legacy) function. Its
`parameters` must be a valid JSON Schema (Draft 2020-12) of an object. A Python module gives the spec of each of
its public functions from their type hints (through pydantic, as `TypeAdapter` reads them; hints written as strings,
as `from __future__ import annotations` leaves them, are evaluated in the module first) and docstrings (Google
style `Args:`); a parameter without a type hint, or one whose hint names nothing the module defines, is an error.
An MCP server (`mcp:<command or URL>`, mcp_server.py) gives the tools it lists, each checked as a file's are.
Calls come as the APIGen seed format (`{"function_name", "arguments": {...}}`) or as OpenAI `tool_calls`
(`{"function": {"name", "arguments": "<JSON>"}}`) and are kept as `[{"name", "arguments"}]`. A JSONL of such pairs
(`--calls`, `--seeds`) is read by `read_pairs`, and `call_issues` checks calls against the tools' JSON Schemas.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from lakesynth.errors import SeedError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI accepts as a function name


def read_spec(path: str) -> list[dict]:
    """The tools of an OpenAI tools file, each as `{"type": "function", "function": {...}}`, validated."""
    where = Path(path)
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SeedError(f"{path}: not a readable JSON tools file: {exc}") from None
    if isinstance(data, dict):
        data = data.get("tools", data.get("functions"))
    if not isinstance(data, list) or not data:
        raise SeedError(f'{path}: expected a list of tools, {{"tools": [...]}} or {{"functions": [...]}}')
    return [_tool(item, f"{path}: tool {i + 1}") for i, item in enumerate(data)]


def list_spec(spec: str, settings) -> list[dict]:
    """The tools an MCP server lists (`mcp:<command or URL>`; `settings` its McpConfig), validated."""
    from lakesynth.tools import mcp_server

    with mcp_server.McpTools(spec, settings) as server:
        return [_tool(item, f"{spec}: tool {item['name']!r}") for item in server.tools]


def _tool(item: Any, where: str) -> dict:
    function = item.get("function", item) if isinstance(item, dict) else None
    if not isinstance(function, dict):
        raise SeedError(f"{where}: a tool is an object with a 'function' (or the function itself)")
    name = function.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise SeedError(f"{where}: 'name' must be 1-64 letters, digits, '_' or '-', got {name!r}")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    check_schema(parameters, f"{where} ({name}): parameters")
    spec = {"name": name, "description": function.get("description") or "", "parameters": parameters}
    return {"type": "function", "function": spec}


def check_schema(schema: Any, where: str) -> None:
    """A tool's parameters: a valid JSON Schema (Draft 2020-12) of an object."""
    from jsonschema import Draft202012Validator, SchemaError

    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise SeedError(f'{where}: must be a JSON Schema with "type": "object"')
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        at = "/".join(str(p) for p in exc.path) or "(root)"
        raise SeedError(f"{where}: not a valid JSON Schema at {at}: {exc.message}") from None


def load_module(path: str):
    """The user's module, imported by file path under a name of its own."""
    file = Path(path)
    name = f"lakesynth_user_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None or not file.is_file():
        raise SeedError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves postponed annotations through the module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raises, name the file
        raise SeedError(f"{path}: the module failed to import: {type(exc).__name__}: {exc}") from None
    return module


def functions(module) -> dict:
    """The module's public functions defined in it (not imported into it), by name."""
    return {
        name: fn
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if not name.startswith("_") and fn.__module__ == module.__name__
    }


def derive_spec(path: str) -> list[dict]:
    """The OpenAI tools of a module's public functions, from their type hints and docstrings."""
    found = functions(load_module(path))
    if not found:
        raise SeedError(f"{path}: defines no public function")
    return [_derived(fn, f"{path}: function {name}") for name, fn in sorted(found.items())]


def _derived(fn, where: str) -> dict:
    from pydantic import create_model

    signature = inspect.signature(fn)
    fields, docs = {}, _arg_docs(inspect.getdoc(fn) or "")
    for param in signature.parameters.values():
        if isinstance(param.annotation, str):
            # `from __future__ import annotations` keeps hints as strings: the parameters' are evaluated, as
            # inspect's eval_str does, but not the return hint, which the spec never uses (often imported only
            # under TYPE_CHECKING).
            try:
                param = param.replace(annotation=eval(param.annotation, fn.__globals__))  # noqa: S307 - a type hint
            except Exception as exc:  # noqa: BLE001 - a hint naming what the module does not define at run time
                raise SeedError(
                    f"{where}: the type hint of '{param.name}' cannot be evaluated: {type(exc).__name__}: {exc}"
                ) from None
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise SeedError(f"{where}: *args and **kwargs cannot be described to a model")
        if param.annotation is inspect.Parameter.empty:
            raise SeedError(f"{where}: parameter '{param.name}' has no type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (param.annotation, default)
    try:
        hints = create_model(f"{fn.__name__}_arguments", **fields).model_json_schema()
    except Exception as exc:  # noqa: BLE001 - pydantic's errors name the type it cannot describe
        raise SeedError(f"{where}: its type hints cannot be described as JSON Schema: {exc}") from None
    parameters = _untitled(hints)
    for name, text in docs.items():
        if name in parameters.get("properties", {}):
            parameters["properties"][name]["description"] = text
    parameters.setdefault("properties", {})
    description = (inspect.getdoc(fn) or "").split("\n\n")[0].strip()
    return _tool({"name": fn.__name__, "description": description, "parameters": parameters}, where)


def _arg_docs(doc: str) -> dict[str, str]:
    """Google-style `Args:` descriptions: `name (type): text` or `name: text`, continued on indented lines."""
    found: dict[str, str] = {}
    section, current = False, None
    for line in doc.splitlines():
        if re.match(r"^(Args|Arguments|Parameters):\s*$", line.strip()):
            section = True
            continue
        if section and line and not line.startswith((" ", "\t")):
            break
        match = re.match(r"^\s+(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", line) if section else None
        if match:
            current = match.group(1)
            found[current] = match.group(3).strip()
        elif section and current and line.strip():
            found[current] += " " + line.strip()
    return found


def _untitled(schema: Any) -> Any:
    """pydantic's schema without its `title` keys (noise to a model); a property named `title` stays."""
    if isinstance(schema, dict):
        return {
            k: (_untitled(v) if k != "properties" else {p: _untitled(s) for p, s in v.items()})
            for k, v in schema.items()
            if k != "title" or not isinstance(v, str)
        }
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


def normalize_calls(line: dict) -> list[dict]:
    """A line's calls as `[{"name", "arguments"}]`, from `function_calls` (APIGen) or OpenAI `tool_calls`.
    Arguments that are not an object (or a JSON string of one) are kept as given for the format check to name."""
    if "function_calls" in line:
        raw, shape = line["function_calls"], "function_calls"
    elif "tool_calls" in line:
        raw, shape = line["tool_calls"], "tool_calls"
    else:
        raise ValueError("no 'function_calls' (or 'tool_calls') list")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"'{shape}' must be a list")
    calls = []
    for i, call in enumerate(raw, start=1):
        if not isinstance(call, dict):
            raise ValueError(f"{shape}[{i}] is not an object")
        if shape == "tool_calls":
            function = call.get("function") or {}
            name, arguments = function.get("name"), function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except ValueError:
                    pass  # kept as text: the format check drops it as arguments_not_json
        else:
            name, arguments = call.get("function_name", call.get("name")), call.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise ValueError(f"{shape}[{i}] has no function name")
        calls.append({"name": name, "arguments": arguments})
    return calls


# The categories of the Berkeley Function Calling Leaderboard, and how many calls each allows (min, max).
CATEGORIES = {
    "simple": (1, 1),
    "multiple": (1, 1),
    "parallel": (2, None),
    "parallel_multiple": (2, None),
    "irrelevance": (0, 0),
}


def parse_pair(text: str, number: int, path: str) -> dict:
    """One JSONL line of query + calls as a row; what cannot be read is its `problem`, not an exception."""
    row = {"source_id": str(number), "query": None, "calls": None, "category": None, "problem": None}
    try:
        line = json.loads(text)
        if not isinstance(line, dict):
            raise ValueError("the line is not a JSON object")
    except ValueError as exc:
        return {**row, "problem": f"not JSON: {exc}", "source": f"{path}#{number}"}
    if line.get("id") is not None:
        row["source_id"] = str(line["id"])
    query = line.get("query")
    row["query"] = query if isinstance(query, str) else None
    row["category"] = line.get("category") if isinstance(line.get("category"), str) else None
    try:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("no 'query' text")
        row["calls"] = json.dumps(normalize_calls(line), ensure_ascii=False, sort_keys=True)
    except ValueError as exc:
        row["problem"] = str(exc)
    return {**row, "source": f"{path}#{number}"}


def read_pairs(path: str) -> list[dict]:
    """Every non-blank line of a JSONL of pairs as a row (`parse_pair`), with a `call_id` that stays the same
    while the line does. Ids used twice, an unreadable file or no lines at all are errors naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SeedError(f"{path}: cannot read the file of calls: {exc}") from None
    rows = [parse_pair(t, n, path) for n, t in enumerate(text.splitlines(), start=1) if t.strip()]
    if not rows:
        raise SeedError(f"{path}: no calls (one JSON object per line)")
    seen: dict[str, int] = {}
    for row in rows:
        seen[row["source_id"]] = seen.get(row["source_id"], 0) + 1
    repeated = sorted(k for k, v in seen.items() if v > 1)
    if repeated:
        raise SeedError(f"{path}: ids used on more than one line: {', '.join(repeated[:5])}")
    for row in rows:  # the same line content keeps its id across runs; a changed line is a new row
        content = json.dumps([row["source_id"], row["query"], row["calls"], row["problem"]])
        row["call_id"] = hashlib.sha256(content.encode()).hexdigest()[:16]
    return rows


def validators(parameters: dict[str, str | dict]) -> dict:
    """Tool name -> a Draft 2020-12 validator of its parameters, with the format checker (dates, emails...)."""
    from jsonschema import Draft202012Validator, FormatChecker

    checker = FormatChecker()
    return {
        name: Draft202012Validator(json.loads(s) if isinstance(s, str) else s, format_checker=checker)
        for name, s in parameters.items()
    }


# A JSON Schema keyword -> the rule a drop reason names (the keyword itself where no clearer name exists).
RULES = {"required": "missing_required", "additionalProperties": "unexpected_argument", "type": "wrong_type"}


def call_issues(calls: list[dict] | None, problem: str | None, checks: dict, category: str | None = None) -> list[dict]:
    """What is wrong with one row's calls (`checks` from `validators`); empty when every call is valid. A row
    that names its category must have as many calls as it allows (irrelevance: none; simple: one)."""
    if problem:
        return [{"call": None, "path": "", "rule": "malformed", "message": problem}]
    found = []
    for i, call in enumerate(calls or [], start=1):
        name, arguments = call["name"], call["arguments"]
        if name not in checks:
            found.append({"call": i, "path": "", "rule": "unknown_function", "message": f"no tool named {name!r}"})
            continue
        if not isinstance(arguments, dict):
            message = f"arguments must be a JSON object, got {json.dumps(arguments)[:80]}"
            found.append({"call": i, "path": "", "rule": "arguments_not_json", "message": message})
            continue
        errors = sorted(checks[name].iter_errors(arguments), key=lambda e: (list(e.path), e.validator))
        for error in errors:
            path = "/".join(str(p) for p in error.absolute_path)
            rule = RULES.get(error.validator, error.validator)
            found.append({"call": i, "path": path, "rule": rule, "message": f"{name}: {error.message}"})
    if category in CATEGORIES:
        least, most = CATEGORIES[category]
        n = len(calls or [])
        if n < least or (most is not None and n > most):
            wanted = f"{least}" if least == most else f"at least {least}"
            message = f"a {category} example has {wanted} call(s), this one {n}"
            found.append({"call": None, "path": "", "rule": "category_mismatch", "message": message})
    return found


def tool_names(spec: str) -> list[str]:
    """The names of the tools a spec names (an OpenAI tools file, or a module's functions), sorted."""
    tools = derive_spec(spec) if spec.endswith(".py") else read_spec(spec)
    return sorted(t["function"]["name"] for t in tools)


def pairs_of(path: str, names: set[str], target: Path) -> str:
    """A copy of a JSONL of pairs at `target` with only the lines that call `names` or nothing (a preview's few
    tools); a line that cannot be read stays, for its check to name."""
    kept = []
    for text in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            called = {c["name"] for c in normalize_calls(json.loads(text))} if text.strip() else set()
        except (ValueError, AttributeError):
            called = set()
        if called <= names:
            kept.append(text)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return str(target)
