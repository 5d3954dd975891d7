"""`lakesynth init`: a starting project of the user's own domain, so that no run has to borrow the packaged bank
sample's rules. It writes conf/lakesynth.yml (found by a run from that folder), the rules and seed templates it
names and, for a job that reads tools, a module of example functions and seed pairs; and a .gitignore of what a
local run writes. The templates are the files in starter/, with `$name`, `$title`, `$schema` and `$system_prompt`
filled in (string.Template: YAML and Python braces stay as they are; a value in the YAML is quoted there, so a title
with `: ` or ` #` stays the title). Nothing is asked interactively, and no existing file is overwritten.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from lakesynth.core import registry
from lakesynth.errors import ConfigError

# (template in starter/, file written under <folder>/conf/), for every job; then those of a job that reads tools.
COMMON = (("lakesynth.yml", "lakesynth.yml"), ("rules.md", "rules.md"), ("seeds.csv", "seeds.csv"))
TOOLS = (("functions.py.tmpl", "functions.py"), ("tool_seeds.jsonl", "tool_seeds.jsonl"))
LOCAL = ".lakesynth/"  # where a run from the folder writes by default


@dataclass(frozen=True)
class Project:
    folder: Path
    files: list[Path]


def slug(text: str) -> str:
    """A name fit for a schema and a use case: lower case letters, digits and underscores."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "my_domain"


def init(folder: Path, *, job_stages: list[str], name: str | None = None, title: str | None = None) -> Project:
    """Write the starting project into `folder`/conf; a ConfigError naming every file already there (nothing is
    written then). `job_stages` are the stages of the job it is for: one that reads tools gets the tools' files."""
    folder = folder.resolve()
    name = slug(name or folder.name)
    title = " ".join((title or name.replace("_", " ").title()).split())  # one line: it goes into comments too
    tools = any(source.flag == "tools" for source in registry.sources(registry.default_stages(), job_stages))
    pairs = COMMON + (TOOLS if tools else ())
    targets = [(template, folder / "conf" / target) for template, target in pairs]
    present = [str(path) for _, path in targets if path.exists()]
    if present:
        raise ConfigError(
            f"lakesynth init: {', '.join(present)} already exist(s); nothing was written "
            "(move them away, or init another folder)"
        )
    prompt = f"You are the assistant of {title}. Be friendly, concise and correct."
    values = {"name": name, "title": title, "schema": f"lakesynth_{name}", "system_prompt": json.dumps(prompt)}
    starter = resources.files("lakesynth") / "starter"
    texts = {template: Template(starter.joinpath(template).read_text(encoding="utf-8")).substitute(values)
             for template, _ in pairs}  # fmt: skip
    if tools:
        texts["lakesynth.yml"] += Template(starter.joinpath("tools.yml").read_text(encoding="utf-8")).substitute(values)
    for template, path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[template], encoding="utf-8")
    return Project(folder, [path for _, path in targets] + ignore_local(folder))


def ignore_local(folder: Path) -> list[Path]:
    """Keep a local run's warehouse, journals and MLflow store (.lakesynth/) out of git: a .gitignore naming it,
    or that line added to the folder's own. The file, if written or changed."""
    ignore = folder / ".gitignore"
    text = ignore.read_text(encoding="utf-8") if ignore.exists() else ""
    if LOCAL in text.splitlines():
        return []
    ignore.write_text(text + ("\n" if text and not text.endswith("\n") else "") + LOCAL + "\n", encoding="utf-8")
    return [ignore]
