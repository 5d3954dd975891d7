"""An InstructLab taxonomy read into rows (rows.py).

An InstructLab taxonomy is a folder tree whose leaves are `qna.yaml` files (the format of instructlab/taxonomy and
its JSON Schemas in instructlab/schema, which the models below follow field for field). Each file is read as the
version it declares, and checked against that version's schema, as InstructLab's own parser does
(`TaxonomyParser(schema_version=0)`, which InstructLab SDG uses): a file without `version` is version 1, as every
leaf of instructlab/taxonomy's `foundational_skills/` is.
- a *skill* (under `compositional_skills/` or `foundational_skills/`), versions 2 and 3: `task_description`,
  `created_by` and 5+ distinct `seed_examples` of `question` / `answer`, each with an optional `context` (a
  *grounded* skill has them); version 1: the same keys, but 1+ `seed_examples` that may repeat (a repeat is read
  once) and a `task_description` that may be empty;
- a *knowledge* leaf (under `knowledge/`), version 3 only (the schema deprecates knowledge of versions 1 and 2):
  `domain`, `created_by`, `document_outline`, 5+ `seed_examples` each with a `context` and 3+
  `questions_and_answers`, and a `document` (`repo`, `commit`, `patterns`; the schema also allows a local `folder`).
Any other key is an error, as in the schema (`attribution.txt` is a file beside `qna.yaml`, not a key), and so is a
repeated seed example where the version's schema says `uniqueItems`. A leaf under another top folder is a skill or knowledge by its
fields (a `document` makes it knowledge), as InstructLab decides. Reading is all-or-nothing: every problem in every
file is collected and raised once, as a SeedError naming the file and the field path (list items from 0, as in the
YAML paths InstructLab prints): `compositional_skills/x/qna.yaml: seed_examples.2.answer: Field required`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from lakesynth.config import YAML_LOADER
from lakesynth.errors import SeedError
from lakesynth.taxonomy.rows import Taxonomy, example_row, leaf_row, listed, value_type

VERSIONS = (1, 2, 3)  # instructlab-schema's versions; a file without `version` is version 1
KNOWLEDGE_VERSION = 3  # the schema deprecates knowledge of versions 1 and 2
SKILL_FOLDERS = ("compositional_skills", "foundational_skills")
KNOWLEDGE_FOLDERS = ("knowledge",)
LEAF_FILE = "qna.yaml"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _Strict(BaseModel):
    """The schema's `unevaluatedProperties: false` and its types as written (no 42 for a string)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SkillExample(_Strict):
    question: Text
    answer: Text
    context: Text | None = None


class SkillLeafV1(_Strict):
    """Version 1 (a file with no `version`): 1+ seed examples, repeats allowed, `task_description` may be empty."""

    version: Literal[1] = 1
    task_description: Annotated[str, StringConstraints(strip_whitespace=True)]
    created_by: Text
    seed_examples: list[SkillExample] = Field(min_length=1)


class SkillLeaf(_Strict):
    """Versions 2 and 3, whose skill schemas are the same."""

    version: Literal[2, 3]
    task_description: Text
    created_by: Text
    seed_examples: list[SkillExample] = Field(min_length=5)


class QuestionAnswer(_Strict):
    model_config = ConfigDict(extra="ignore")  # the schema leaves a Q&A item open to other keys
    question: Text
    answer: Text


class KnowledgeExample(_Strict):
    context: Text
    questions_and_answers: list[QuestionAnswer] = Field(min_length=3)


class Document(_Strict):
    repo: str | None = None
    commit: str | None = None
    folder: Text | None = None  # a local folder in the schema; lakesynth resolves patterns against --documents
    patterns: list[Text] = Field(min_length=1)


class KnowledgeLeaf(_Strict):
    version: Literal[3]
    domain: Text
    created_by: Text
    document_outline: Text
    seed_examples: list[KnowledgeExample] = Field(min_length=5)
    document: Document


def read_taxonomy(root: str | Path) -> Taxonomy:
    """Every `qna.yaml` under `root` (hidden folders skipped), validated all together: one error lists them all."""
    base = Path(root)
    if not base.is_dir():
        raise SeedError(f"{root}: taxonomy folder not found")
    files = _leaf_files(base)
    if not files:
        raise SeedError(f"{root}: no {LEAF_FILE} found in the taxonomy (a leaf is a folder holding a {LEAF_FILE})")
    taxonomy, problems = Taxonomy(), []
    for file in files:
        source = file.relative_to(base).as_posix()
        found = _read_leaf(file, source)
        if isinstance(found, list):
            problems += found
        else:
            leaf, examples = found
            taxonomy.leaves.append(leaf)
            taxonomy.examples += examples
    if problems:
        raise SeedError(listed(f"{root}: {len(problems)} problem(s) in the taxonomy, nothing was read", problems))
    return taxonomy


def _leaf_files(base: Path) -> list[Path]:
    found = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if LEAF_FILE in names:
            found.append(Path(folder) / LEAF_FILE)
    return found


def _read_leaf(file: Path, source: str) -> tuple[dict, list[dict]] | list[str]:
    """A leaf's row and example rows, or the problems that keep it from being read."""
    leaf = Path(source).parent.as_posix()
    if leaf == ".":
        return [f"{source}: a leaf is a folder under the taxonomy root, not the root itself"]
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=YAML_LOADER)
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{source}: cannot be read: {exc}"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return [f"{source}: not valid YAML{at}: {problem}"]
    if not isinstance(data, dict):
        return [f"{source}: (root): expected a mapping of fields, got {value_type(data)}"]
    version, problem = _version(data)
    if problem:
        return [f"{source}: version: {problem}"]
    kind, mismatch = _kind(leaf, data)
    if mismatch:
        return [f"{source}: (root): {mismatch}"]
    if kind == "knowledge" and version != KNOWLEDGE_VERSION:
        has = f"version {version}" if "version" in data else "no version, so version 1"
        deprecated = "instructlab-schema deprecates knowledge of versions 1 and 2"
        return [
            f"{source}: version: knowledge is read as version {KNOWLEDGE_VERSION} only ({deprecated}); this file has {has}"
        ]
    model = KnowledgeLeaf if kind == "knowledge" else SkillLeafV1 if version == 1 else SkillLeaf
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        return [f"{source}: {_loc(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
    return _rows(parsed, leaf, source)


def _version(data: dict) -> tuple[int, str | None]:
    """The version whose schema the file is checked against, as InstructLab's parser reads it (none is 1), or the
    problem with the one it declares."""
    if "version" not in data:
        return 1, None
    value = data["version"]
    if isinstance(value, bool) or not isinstance(value, int):
        return 0, f"must be an integer, 1, 2 or 3 (a file without version is version 1), got {value!r}"
    if value not in VERSIONS:
        return 0, f"{value} is not a qna.yaml version: instructlab-schema has 1, 2 and 3 (none means 1)"
    return value, None


def _kind(leaf: str, data: dict) -> tuple[str, str | None]:
    """`skill` or `knowledge`, from the top folder and the fields; a problem when they plainly disagree (a file
    with fields of both kinds is left to the model, which names each field that does not belong)."""
    top = leaf.split("/")[0]
    skill_fields = "task_description" in data
    knowledge_fields = "document" in data or "domain" in data
    if top in KNOWLEDGE_FOLDERS:
        if skill_fields and not knowledge_fields:
            return "knowledge", f"a skill's task_description in a knowledge leaf (under {top}/): move it or fix it"
        return "knowledge", None
    if top in SKILL_FOLDERS:
        if knowledge_fields and not skill_fields:
            return "skill", f"a knowledge leaf's domain/document in a skill leaf (under {top}/): move it or fix it"
        return "skill", None
    return ("knowledge" if knowledge_fields else "skill"), None  # as InstructLab decides outside its folders


def _rows(
    parsed: SkillLeafV1 | SkillLeaf | KnowledgeLeaf, leaf: str, source: str
) -> tuple[dict, list[dict]] | list[str]:
    problems, seen, repeats = [], {}, set()
    for i, item in enumerate(parsed.seed_examples):
        key = item.model_dump_json()
        if key in seen and isinstance(parsed, SkillLeafV1):
            repeats.add(i)  # version 1 has no uniqueItems: InstructLab reads the file, and the example counts once
        elif key in seen:
            problems.append(f"{source}: seed_examples.{i}: repeats seed_examples.{seen[key]}")
        seen.setdefault(key, i)
        for j, qa in enumerate(getattr(item, "questions_and_answers", [])):
            if (qa.question, qa.answer) in [(o.question, o.answer) for o in item.questions_and_answers[:j]]:
                problems.append(f"{source}: seed_examples.{i}.questions_and_answers.{j}: repeats an earlier one")
    if problems:
        return problems
    examples: list[dict] = []
    if isinstance(parsed, KnowledgeLeaf):
        for i, item in enumerate(parsed.seed_examples):
            for qa in item.questions_and_answers:
                content = {"context": item.context, "question": qa.question, "answer": qa.answer}
                examples.append(example_row(leaf, len(examples), i, content))
        document = parsed.document
        row = leaf_row(leaf, "knowledge", True, parsed.domain, source, created_by=parsed.created_by)
        row.update(
            document_outline=parsed.document_outline,
            patterns=json.dumps(document.patterns),
            document_repo=document.repo,
            document_commit=document.commit,
        )
    else:
        for i, item in enumerate(parsed.seed_examples):
            if i not in repeats:
                examples.append(example_row(leaf, len(examples), i, item.model_dump(exclude_none=True)))
        grounded = any(item.context for item in parsed.seed_examples)
        row = leaf_row(leaf, "skill", grounded, parsed.task_description, source, created_by=parsed.created_by)
    ids = [e["example_id"] for e in examples]
    if len(set(ids)) != len(ids):  # two items of one context repeat a Q&A: the same example twice
        return [f"{source}: seed_examples: the same question, answer and context appear twice"]
    return row, examples


def _loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(root)"
