"""The config reference (docs/config.md), generated from the config models so it cannot drift from them.

    python -m lakesynth.core.config_reference      # rewrites docs/config.md

tests/test_config.py regenerates it and fails, with this command, when the file differs.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from lakesynth import config
from lakesynth.core import registry

DOC = Path(__file__).resolve().parents[3] / "docs" / "config.md"
COMMAND = "python -m lakesynth.core.config_reference"
HEADER = f"""# Config reference

Every key of conf/lakesynth.yml, with its type, default and meaning; generated from the config models by
`{COMMAND}` (do not edit by hand). Set any key in the config file or with
`lakesynth run --set dotted.key=value`. `*` stands for any name of a map (`endpoints.*`) or index of a list.
Relative paths are relative to the config file.
"""


def type_name(annotation: Any) -> str:
    """A field's type as a user writes it in YAML."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"map of {type_name(args[-1])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.default is PydanticUndefined:
        return "(required)" if field.default_factory is None else ""
    value = field.default
    if isinstance(value, str) and "\n" in value:
        return "(packaged text)"
    if isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
        return f"({len(value)} packaged)"
    text = f"`{json.dumps(list(value) if isinstance(value, tuple) else value, default=str)}`"
    return text if len(text) <= 60 else text[:56] + "…`"


def rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every key of `model`, sections before their keys."""
    found = []
    for key, (annotation, field) in config.keys(model).items():
        described = (field.description or "").replace("|", "\\|").replace("\n", " ")
        found.append((key, type_name(annotation), default_text(field), described))
    return found


def render(model: type[BaseModel] | None = None) -> str:
    model = model or registry.config_model()
    lines = [HEADER]
    for key, kind, default, description in rows(model):
        if "." not in key and kind == "section" or key == "endpoints":
            lines += [
                "",
                f"## {key}",
                "",
                description,
                "",
                "| key | type | default | description |",
                "|---|---|---|---|",
            ]
            continue
        if "." not in key and not any(line.startswith("## (top level)") for line in lines):
            lines += ["", "## (top level)", "", "| key | type | default | description |", "|---|---|---|---|"]
        lines.append(f"| `{key}` | {kind} | {default} | {description} |")
    return "\n".join(lines) + "\n"


def missing_descriptions(model: type[BaseModel] | None = None) -> list[str]:
    """The keys with no description."""
    return [key for key, _, _, description in rows(model or registry.config_model()) if not description.strip()]


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC}", file=sys.stderr)
